"""Losses (torch only): Dice + CE with label smoothing, the partial-label (marginal) rule and
the cross pseudo supervision loss. All take logits (B, K, H, W) and apply the softmax once."""

from slicevos.losses.cps import CPS_KINDS, CPSLoss
from slicevos.losses.dice_ce import DiceCELoss, smoothed_cross_entropy, soft_dice_loss
from slicevos.losses.partial import merge_unannotated

__all__ = ["CPS_KINDS", "CPSLoss", "DiceCELoss", "merge_unannotated", "smoothed_cross_entropy",
           "soft_dice_loss"]
