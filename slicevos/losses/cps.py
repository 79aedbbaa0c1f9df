"""Cross pseudo supervision loss (Chen et al., CVPR 2021): one network's argmax is the other's
target. The paper this project follows uses Dice only for this branch (``kind="dice"``).

``confidence`` > 0 keeps only the pixels where the teacher's softmax peak reaches it (as in
FixMatch and the thresholded CPS variants): a weak teacher's unsure pixels then teach nothing
instead of teaching its guess. 0 is the paper's CPS (every pixel)."""

from __future__ import annotations

import torch
from torch import nn

from slicevos.losses.dice_ce import DiceCELoss

CPS_KINDS: dict[str, tuple[float, float]] = {  # kind -> (dice weight, CE weight)
    "dice": (1.0, 0.0),
    "ce": (0.0, 1.0),
    "dice_ce": (1.0, 1.0),
}


class CPSLoss(nn.Module):
    """``forward(logits_student, logits_teacher) -> scalar``, both (B, K, H, W) logits.

    The target is ``argmax(logits_teacher)``, detached: no gradient reaches the teacher through
    this loss (call it twice with the roles swapped for the symmetric CPS loss). The softmax is
    applied exactly once, to the student's logits; never pass probabilities. No label smoothing
    (the pseudo-label is already a hard, noisy target). ``confidence`` in [0, 1): see the module
    doc.
    """

    def __init__(self, kind: str = "dice", ignore_empty_dice: bool = True,
                 confidence: float = 0.0) -> None:
        super().__init__()
        if kind not in CPS_KINDS:
            raise ValueError(f"unknown CPS loss kind {kind!r}; use one of {sorted(CPS_KINDS)}")
        if not 0 <= confidence < 1:
            raise ValueError(f"CPS confidence must be in [0, 1), got {confidence}")
        self.kind = kind
        self.confidence = confidence
        dice_weight, ce_weight = CPS_KINDS[kind]
        self.loss = DiceCELoss(smoothing=0.0, dice_weight=dice_weight, ce_weight=ce_weight,
                               ignore_empty_dice=ignore_empty_dice)

    def forward(self, logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
        if logits_student.shape != logits_teacher.shape:
            raise ValueError(f"student and teacher logits differ in shape: "
                             f"{tuple(logits_student.shape)} vs {tuple(logits_teacher.shape)}")
        teacher = logits_teacher.detach()
        if self.confidence == 0:
            return self.loss(logits_student, teacher.argmax(dim=1))
        peak, pseudo_label = torch.softmax(teacher.float(), dim=1).max(dim=1)
        return self.loss(logits_student, pseudo_label, pixel_mask=peak >= self.confidence)
