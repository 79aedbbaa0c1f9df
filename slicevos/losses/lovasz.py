"""Lovasz losses (Berman, Rannen Triki and Blaschko, CVPR 2018): a convex surrogate of the
Jaccard (IoU) loss, optimised directly.

For one class with ground-truth set ``y``, the Jaccard loss of a set of mispredicted pixels
``M`` is ``J(M) = |M| / |y u M|``. Its Lovasz extension at an error vector ``m >= 0`` (one
entry per pixel) is ``sum_i m_(i) * (J(M_i) - J(M_(i-1)))``, with the errors sorted in
decreasing order and ``M_i`` the pixels of the ``i`` largest errors. Along that order
``|y \\ M_i| = |y| - cumsum(in y)`` and ``|y u M_i| = |y| + cumsum(not in y)``, so every
``J(M_i)`` comes from two cumulative sums (``jaccard_steps``).

- ``lovasz_softmax(logits, target)``: multi-class; per class c the errors are
  ``|[target == c] - softmax(logits)_c|``; mean over the classes present in the target.
- ``lovasz_hinge(logits, target)``: binary; errors ``relu(1 - logit * sign)`` with sign +1 on
  the object and -1 elsewhere.

Both take logits (never probabilities), compute in float32, leave ``ignore_index`` pixels out,
and with ``per_image`` average the loss of each sample instead of pooling the batch's pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from slicevos.losses.ohem import check_class_target


def jaccard_steps(in_set_sorted: torch.Tensor) -> torch.Tensor:
    """Increments ``J(M_i) - J(M_(i-1))`` of the Jaccard loss along a sorted error order.

    ``in_set_sorted`` float (P,): 1 where the pixel belongs to the ground truth, in the order of
    decreasing error. Returns float (P,); they sum to ``J(all pixels)``.
    """
    total = in_set_sorted.sum()
    intersection = total - in_set_sorted.cumsum(0)
    union = total + (1 - in_set_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_extension(errors: torch.Tensor, in_set: torch.Tensor) -> torch.Tensor:
    """The Lovasz extension of the Jaccard loss of ``in_set`` (P,) at ``errors`` (P,) >= 0.

    The gradient flows through ``errors``; the sort order is treated as constant (it is
    piecewise constant, so this is the exact subgradient).
    """
    if errors.numel() == 0:
        return errors.sum() * 0.0
    errors_sorted, order = torch.sort(errors, descending=True)
    return torch.dot(errors_sorted, jaccard_steps(in_set[order].to(errors.dtype)))


def _per_image(loss_fn, logits: torch.Tensor, target: torch.Tensor, per_image: bool
               ) -> torch.Tensor:
    if per_image:
        return torch.stack([loss_fn(lg[None], tg[None]) for lg, tg in zip(logits, target,
                                                                          strict=True)]).mean()
    return loss_fn(logits, target)


class LovaszSoftmaxLoss(nn.Module):
    """``forward(logits (B, K, H, W), target int64 (B, H, W)) -> scalar``.

    ``classes="present"`` averages over the classes present in the (non-ignored) target, as
    the paper recommends (an absent class has no overlap to measure); ``"all"`` over every
    class (an absent class then costs the largest probability any pixel gives it).
    """

    def __init__(self, classes: str = "present", per_image: bool = False,
                 ignore_index: int = -100) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.classes, self.per_image, self.ignore_index = classes, per_image, ignore_index

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1).movedim(1, -1).reshape(-1, logits.shape[1])
        target = target.reshape(-1)
        kept = target != self.ignore_index
        probs, target = probs[kept], target[kept]
        losses = []
        for c in range(probs.shape[1]):
            in_class = (target == c).float()
            if self.classes == "present" and not bool(in_class.any()):
                continue
            losses.append(lovasz_extension((in_class - probs[:, c]).abs(), in_class))
        if not losses:
            return logits.float().sum() * 0.0
        return torch.stack(losses).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_class_target(logits, target, self.ignore_index)
        return _per_image(self._loss, logits, target.long(), self.per_image)


class LovaszHingeLoss(nn.Module):
    """``forward(logits (B, H, W), target (B, H, W) in {0, 1}) -> scalar``: binary masks, one
    logit per pixel (object vs. not). ``ignore_index`` pixels are left out."""

    def __init__(self, per_image: bool = False, ignore_index: int = -100) -> None:
        super().__init__()
        self.per_image, self.ignore_index = per_image, ignore_index

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kept = target != self.ignore_index
        logits, target = logits.float()[kept], target[kept].float()
        errors = torch.relu(1 - logits * (2 * target - 1))
        return lovasz_extension(errors, target)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits and target differ in shape: {tuple(logits.shape)} vs "
                             f"{tuple(target.shape)}")
        kept = target[target != self.ignore_index]
        if kept.numel() and bool(((kept != 0) & (kept != 1)).any()):
            raise ValueError("lovasz_hinge target must be a binary mask of 0 and 1 (or "
                             f"ignore_index {self.ignore_index})")
        return _per_image(self._loss, logits, target, self.per_image)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, classes: str = "present",
                   per_image: bool = False, ignore_index: int = -100) -> torch.Tensor:
    """Functional form of ``LovaszSoftmaxLoss``."""
    return LovaszSoftmaxLoss(classes, per_image, ignore_index)(logits, target)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, per_image: bool = False,
                 ignore_index: int = -100) -> torch.Tensor:
    """Functional form of ``LovaszHingeLoss``."""
    return LovaszHingeLoss(per_image, ignore_index)(logits, target)
