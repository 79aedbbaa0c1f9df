"""Dice + cross-entropy with label smoothing: the supervised loss of the reference module.

Shapes: logits float (B, K, H, W), K = schema.num_classes with background in channel 0; target
int64 (B, H, W) class ids; optional ``annotated`` bool (B, K) for partially labeled samples
(see ``slicevos.losses.partial``); optional ``pixel_mask`` bool (B, H, W): the pixels the loss
is taken over (False: left out of both terms, e.g. a pseudo-label's unconfident pixels). The
softmax is taken once (``log_softmax``); the Dice term uses its ``exp``. Losses are computed in
float32 whatever the logits' dtype (AMP).

Dice is the batch soft Dice: for each class, intersection and sums run over all pixels of all
samples of the batch, which is steadier for small organs than a per-sample Dice. A class absent
from the whole batch's target has no overlap to reward, so its Dice is ~0 for any stray
probability mass (or exactly its smoothing term): a large, noisy penalty that has nothing to do
with the organ. With ``ignore_empty_dice=True`` (the default) such classes are left out of the
Dice mean; the cross-entropy term still pushes their probabilities down. With False every class
annotated in at least one sample counts (an absent class scores 1 only if predicted nowhere).
"""

from __future__ import annotations

import torch
from torch import nn

from slicevos.losses.partial import check_annotated, merge_unannotated


def check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless logits are (B, K, H, W) and target (B, H, W) holds ids < K."""
    if logits.ndim != 4 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits (B, K, H, W) and target (B, H, W), got logits "
                         f"{tuple(logits.shape)} and target {tuple(target.shape)}")
    if target.dtype.is_floating_point or bool(((target < 0) | (target >= logits.shape[1])).any()):
        raise ValueError(f"target must hold integer class ids in 0..{logits.shape[1] - 1}, got "
                         f"{target.dtype} values {target.min().item()}..{target.max().item()}")


def _masked_mean(values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, H, W) ``values`` over the True pixels of ``pixel_mask`` (all if None); 0 with
    a gradient path when no pixel is kept."""
    if pixel_mask is None:
        return values.mean()
    return (values * pixel_mask).sum() / pixel_mask.sum().clamp_min(1)


def smoothed_cross_entropy(log_probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                           smoothing: float, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy against ``(1 - smoothing) * one_hot + smoothing / n_valid``.

    ``log_probs`` (B, K, H, W); ``valid`` bool (B, K): the channels the smoothing mass is spread
    over (all K for a fully labeled sample, as ``F.cross_entropy(label_smoothing=...)`` does);
    ``pixel_mask`` bool (B, H, W): the pixels averaged over (None: all).
    """
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)
    if smoothing == 0:
        return _masked_mean(nll, pixel_mask)
    valid_log_probs = torch.where(valid[:, :, None, None], log_probs, 0.0)  # no -inf * 0
    uniform = -valid_log_probs.sum(1) / valid.sum(1)[:, None, None]
    return _masked_mean((1 - smoothing) * nll + smoothing * uniform, pixel_mask)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                   ignore_empty: bool = True, smooth: float = 1e-5,
                   pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean batch soft Dice over the counted classes (see the module doc).

    ``probs`` (B, K, H, W) probabilities (not logits); ``target`` (B, H, W) class ids; ``valid``
    bool (B, K) annotated classes (None: all); ``pixel_mask`` bool (B, H, W): the pixels the sums
    run over (None: all). Per class k:
    ``(2 * sum(p_k * t_k) + smooth) / (sum(p_k) + sum(t_k) + smooth)``.
    """
    one_hot = torch.zeros_like(probs).scatter_(1, target[:, None], 1.0)
    if pixel_mask is not None:
        kept = pixel_mask[:, None].to(probs.dtype)
        probs, one_hot = probs * kept, one_hot * kept
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    truth = one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (probs.sum(dims) + truth + smooth)
    if ignore_empty:
        counted = truth > 0
    elif valid is not None:
        counted = valid.any(0)
    else:
        counted = torch.ones_like(dice, dtype=torch.bool)
    counted = counted.to(dice.dtype)
    return 1 - (dice * counted).sum() / counted.sum().clamp_min(1)


class DiceCELoss(nn.Module):
    """``ce_weight * CE(label smoothing) + dice_weight * (1 - soft Dice)`` on logits.

    ``forward(logits, target, annotated=None, pixel_mask=None) -> scalar``; with ``annotated``
    (bool (B, K)) the marginal partial-label rule applies: each sample's unannotated classes are
    merged into background before both terms, and are left out of the smoothing and the Dice
    mean. ``pixel_mask`` (bool (B, H, W)) restricts both terms to its True pixels.
    """

    def __init__(self, smoothing: float = 0.1, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 ignore_empty_dice: bool = True, dice_smooth: float = 1e-5) -> None:
        super().__init__()
        if not 0 <= smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_empty_dice = ignore_empty_dice
        self.dice_smooth = dice_smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                annotated: torch.Tensor | None = None,
                pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_logits_target(logits, target)
        if pixel_mask is not None and (pixel_mask.dtype != torch.bool
                                       or pixel_mask.shape != target.shape):
            raise ValueError(f"pixel_mask must be bool {tuple(target.shape)} like the target, got "
                             f"{pixel_mask.dtype} {tuple(pixel_mask.shape)}")
        target = target.long()
        if annotated is None:
            log_probs = torch.log_softmax(logits.float(), dim=1)
            valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        else:
            check_annotated(logits, annotated)
            valid = annotated.clone()
            valid[:, 0] = True
            drawn = valid.gather(1, target.flatten(1))
            if not bool(drawn.all()):
                bad = torch.unique(target.flatten(1)[~drawn]).tolist()
                raise ValueError(f"target holds class ids {bad} that annotated marks as not "
                                 "drawn; mark them annotated or relabel them as background")
            log_probs = merge_unannotated(logits, valid)
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * smoothed_cross_entropy(log_probs, target, valid,
                                                                  self.smoothing, pixel_mask)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(
                log_probs.exp(), target, valid, self.ignore_empty_dice, self.dice_smooth,
                pixel_mask)
        return loss
