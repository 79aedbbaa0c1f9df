"""Partial labels: the marginal rule for a case whose annotator drew only some classes.

A pixel labeled background in such a case may truly be background or any class the annotator
never drew. The marginal loss (Shi et al., "Marginal loss and exclusion loss for partially
supervised multi-organ segmentation", MedIA 2021) therefore scores "background" with the summed
probability of background and every unannotated class, and leaves the unannotated channels out
of the loss: predicting an unannotated organ on a background pixel costs nothing.
"""

from __future__ import annotations

import torch


def check_annotated(logits: torch.Tensor, annotated: torch.Tensor) -> None:
    """Raise ValueError unless ``annotated`` is bool (B, K) matching ``logits`` (B, K, H, W)."""
    if annotated.dtype != torch.bool or tuple(annotated.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"annotated must be a bool tensor of shape (B, K) = "
                         f"{tuple(logits.shape[:2])}, got {annotated.dtype} "
                         f"{tuple(annotated.shape)}")


def merge_unannotated(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, K, H, W) under the marginal rule, computed in float32.

    ``logits`` (B, K, H, W) raw network outputs (channel 0 = background); ``annotated`` bool
    (B, K): True for the classes drawn in that sample (channel 0 counts as annotated whatever it
    says). Channel 0 of the result is ``logsumexp`` of the log-softmax of background and of every
    unannotated class; unannotated channels are ``-inf`` (probability 0, so ``exp`` of the
    result sums to 1 over the annotated channels); annotated channels are the plain
    log-softmax. The softmax is taken exactly once, here. With every class annotated the result
    equals ``log_softmax(logits, 1)``.
    """
    check_annotated(logits, annotated)
    log_probs = torch.log_softmax(logits.float(), dim=1)
    merged = ~annotated
    merged[:, 0] = True  # the channels summed into background: background + unannotated
    background = torch.logsumexp(log_probs.masked_fill(~merged[:, :, None, None], -torch.inf),
                                 dim=1, keepdim=True)
    unannotated = (~annotated)[:, 1:, None, None]
    return torch.cat([background, log_probs[:, 1:].masked_fill(unannotated, -torch.inf)], dim=1)
