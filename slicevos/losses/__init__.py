"""Losses (torch only): Dice + CE with label smoothing, the partial-label (marginal) rule and
the cross pseudo supervision loss for the reference module; bootstrapped (OHEM) cross entropy
and Lovasz losses for the propagation module. All take logits and apply softmax/sigmoid once."""

from slicevos.losses.cps import CPS_KINDS, CPSLoss
from slicevos.losses.dice_ce import DiceCELoss, smoothed_cross_entropy, soft_dice_loss
from slicevos.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_hinge, lovasz_softmax
from slicevos.losses.ohem import OhemCrossEntropy
from slicevos.losses.partial import merge_unannotated

__all__ = ["CPS_KINDS", "CPSLoss", "DiceCELoss", "LovaszHingeLoss", "LovaszSoftmaxLoss",
           "OhemCrossEntropy", "lovasz_hinge", "lovasz_softmax", "merge_unannotated",
           "smoothed_cross_entropy", "soft_dice_loss"]
