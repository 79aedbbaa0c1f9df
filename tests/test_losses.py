"""Losses: hand-computed Dice + CE, the partial-label (marginal) rule, the CPS loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slicevos.losses import CPSLoss, DiceCELoss, merge_unannotated, soft_dice_loss


def _pixel(values: list[float]) -> torch.Tensor:
    """Logits of one 1x1 image: (1, K, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def _random_case(seed: int = 0, b: int = 2, k: int = 4, h: int = 8, w: int = 6):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=gen) * 2
    target = torch.randint(0, k, (b, h, w), generator=gen)
    return logits, target


# --- Dice + CE ---------------------------------------------------------------------------------

def test_dice_ce_matches_hand_computation_on_one_pixel() -> None:
    logits, target = _pixel([1.0, 2.0, 0.0]), torch.tensor([[[1]]])
    z = math.exp(1) + math.exp(2) + 1
    p = [math.exp(1) / z, math.exp(2) / z, 1 / z]
    s = 0.1
    ce = -(1 - s) * math.log(p[1]) - s / 3 * sum(math.log(q) for q in p)
    eps = 1e-5
    dice_present = (2 * p[1] + eps) / (p[1] + 1 + eps)  # only class 1 is in the target
    got = DiceCELoss(smoothing=s)(logits, target)
    assert got.item() == pytest.approx(ce + 1 - dice_present, rel=1e-5)
    dice_all = [(eps) / (p[0] + eps), dice_present, eps / (p[2] + eps)]
    got_all = DiceCELoss(smoothing=s, ignore_empty_dice=False)(logits, target)
    assert got_all.item() == pytest.approx(ce + 1 - sum(dice_all) / 3, rel=1e-5)


def test_cross_entropy_term_equals_torch_label_smoothing() -> None:
    logits, target = _random_case()
    ours = DiceCELoss(smoothing=0.1, dice_weight=0.0)(logits, target)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item(),
                                        rel=1e-5)


def test_dice_is_batch_dice_over_present_classes() -> None:
    probs = torch.zeros(2, 3, 1, 2)
    probs[:, 0] = 1.0  # predicts background everywhere
    target = torch.tensor([[[0, 1]], [[0, 0]]])  # class 2 absent from the batch
    # background: 2*3 / (4 + 3); class 1: 0 / (0 + 1) -> mean over the 2 present classes
    expected = 1 - ((6 + 1e-5) / (7 + 1e-5) + 1e-5 / (1 + 1e-5)) / 2
    assert soft_dice_loss(probs, target).item() == pytest.approx(expected, rel=1e-5)


def test_optimising_logits_lowers_the_loss_and_fits_the_target() -> None:
    _, target = _random_case(seed=1)
    logits = torch.zeros(2, 4, 8, 6, requires_grad=True)
    loss_fn = DiceCELoss()
    optimizer = torch.optim.Adam([logits], lr=0.1)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(logits.argmax(1), target)


def test_bad_shapes_and_ids_are_rejected() -> None:
    logits, target = _random_case()
    with pytest.raises(ValueError, match=r"logits \(B, K, H, W\) and target \(B, H, W\)"):
        DiceCELoss()(logits, target[0])
    with pytest.raises(ValueError, match=r"class ids in 0\.\.3"):
        DiceCELoss()(logits, target + 4)
    with pytest.raises(ValueError, match=r"annotated must be a bool tensor of shape \(B, K\)"):
        DiceCELoss()(logits, target, annotated=torch.ones(2, 3, dtype=torch.bool))


# --- partial labels ----------------------------------------------------------------------------

def test_merge_unannotated_by_hand() -> None:
    logits = _pixel([0.0, 1.0, 2.0])
    annotated = torch.tensor([[True, True, False]])
    out = merge_unannotated(logits, annotated).view(-1)
    z = 1 + math.e + math.e**2
    assert out[0].item() == pytest.approx(math.log((1 + math.e**2) / z), rel=1e-6)
    assert out[1].item() == pytest.approx(math.log(math.e / z), rel=1e-6)
    assert out[2].item() == -math.inf
    assert out.exp().sum().item() == pytest.approx(1.0)


def test_partial_loss_ignores_an_unannotated_class_predicted_on_background() -> None:
    # one background pixel; the net is sure it is class 2, which this sample's annotator never drew
    logits, target = _pixel([0.0, 0.0, 5.0]), torch.tensor([[[0]]])
    annotated = torch.tensor([[True, True, False]])
    z = 2 + math.exp(5)
    p_bg, p_merged = 1 / z, (1 + math.exp(5)) / z  # plain vs marginal background probability
    eps = 1e-5
    loss_fn = DiceCELoss(smoothing=0.0)
    plain = loss_fn(logits, target)
    partial = loss_fn(logits, target, annotated=annotated)
    expected_plain = -math.log(p_bg) + 1 - (2 * p_bg + eps) / (p_bg + 1 + eps)
    expected_partial = -math.log(p_merged) + 1 - (2 * p_merged + eps) / (p_merged + 1 + eps)
    assert plain.item() == pytest.approx(expected_plain, rel=1e-5)  # about 6.0
    assert partial.item() == pytest.approx(expected_partial, rel=1e-4)  # about 0.01
    assert plain.item() > 5.0 and partial.item() < 0.02
    # with smoothing the mass is spread over the 2 annotated channels only
    s = 0.1
    p_1 = 1 / z
    smoothed = DiceCELoss(smoothing=s, dice_weight=0.0)(logits, target, annotated=annotated)
    expected = -(1 - s) * math.log(p_merged) - s / 2 * (math.log(p_merged) + math.log(p_1))
    assert smoothed.item() == pytest.approx(expected, rel=1e-5)


def test_partial_loss_still_punishes_a_wrong_annotated_class() -> None:
    logits, target = _pixel([0.0, 5.0, 0.0]), torch.tensor([[[0]]])
    partial = DiceCELoss()(logits, target, annotated=torch.tensor([[True, True, False]]))
    assert partial.item() > 3.0


def test_partial_loss_with_every_class_annotated_equals_the_plain_loss() -> None:
    logits, target = _random_case(seed=2)
    annotated = torch.ones(2, 4, dtype=torch.bool)
    for loss_fn in (DiceCELoss(), DiceCELoss(ignore_empty_dice=False, smoothing=0.2)):
        assert loss_fn(logits, target, annotated).item() == pytest.approx(
            loss_fn(logits, target).item(), rel=1e-6)


def test_partial_gradients_are_finite_and_treat_merged_classes_as_one() -> None:
    logits, target = _random_case(seed=3)
    target[target == 3] = 0  # class 3 not drawn in sample 0 -> its pixels are background
    annotated = torch.tensor([[True, True, True, False], [True, True, True, True]])
    logits.requires_grad_(True)
    DiceCELoss()(logits, target, annotated).backward()
    assert torch.isfinite(logits.grad).all()
    # sample 0 sees background and class 3 only through p_0 + p_3, so the gradient of both
    # logits is proportional to their probability (d loss / d l_k = c * p_k for k in {0, 3})
    ratio = logits.grad / logits.detach().softmax(1)
    assert torch.allclose(ratio[0, 0], ratio[0, 3], rtol=1e-3, atol=1e-4)
    # sample 1 is fully annotated: class 3 is an ordinary class there
    assert not torch.allclose(ratio[1, 0], ratio[1, 3], atol=1e-2)


def test_target_with_an_unannotated_class_is_rejected() -> None:
    logits, target = _pixel([0.0, 0.0, 0.0]), torch.tensor([[[2]]])
    with pytest.raises(ValueError, match=r"class ids \[2\] that annotated marks as not drawn"):
        DiceCELoss()(logits, target, annotated=torch.tensor([[True, True, False]]))


# --- CPS ---------------------------------------------------------------------------------------

def test_cps_target_is_detached_from_the_teacher() -> None:
    student, _ = _random_case(seed=4)
    teacher, _ = _random_case(seed=5)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    for kind in ("dice", "ce", "dice_ce"):
        student.grad = None
        CPSLoss(kind)(student, teacher).backward()
        assert teacher.grad is None
        assert student.grad is not None and student.grad.abs().sum() > 0
        # a hard target: only the teacher's argmax matters, not its confidence
        one_hot = F.one_hot(teacher.argmax(1), 4).permute(0, 3, 1, 2).float()
        loss = CPSLoss(kind)(student, teacher).item()
        assert CPSLoss(kind)(student, teacher * 10).item() == pytest.approx(loss)
        assert CPSLoss(kind)(student, one_hot).item() == pytest.approx(loss)


def test_cps_dice_by_hand_and_no_double_softmax() -> None:
    # two pixels, 2 classes; teacher says class 1 then class 0
    student = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    teacher = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]]]])
    p1 = [1 / (1 + math.exp(2)), 1 / (1 + math.exp(-1))]  # softmax(student) class 1 per pixel
    p0 = [1 - p1[0], 1 - p1[1]]
    eps = 1e-5
    dice0 = (2 * p0[1] + eps) / (p0[0] + p0[1] + 1 + eps)
    dice1 = (2 * p1[0] + eps) / (p1[0] + p1[1] + 1 + eps)
    expected = 1 - (dice0 + dice1) / 2
    assert CPSLoss("dice")(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    expected_ce = -(math.log(p1[0]) + math.log(p0[1])) / 2
    assert CPSLoss("ce")(student, teacher).item() == pytest.approx(expected_ce, rel=1e-5)
    # feeding probabilities would softmax them again: a different (wrong) value
    probs = student.softmax(1)
    for kind in ("dice", "ce"):
        assert abs(CPSLoss(kind)(probs, teacher).item() - CPSLoss(kind)(student, teacher).item()) > 0.05


def test_cps_rejects_unknown_kind_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="unknown CPS loss kind 'l2'"):
        CPSLoss("l2")
    with pytest.raises(ValueError, match="differ in shape"):
        CPSLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# --- pixel masks and confident CPS -------------------------------------------------------------

def test_pixel_mask_equals_the_loss_of_the_kept_pixels_alone() -> None:
    logits, target = _random_case(seed=6, b=1, h=4, w=6)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, :3] = True  # the left half
    for dice_weight, ce_weight in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0)):
        loss = DiceCELoss(0.1, dice_weight, ce_weight)
        expected = loss(logits[..., :3].contiguous(), target[..., :3].contiguous())
        assert loss(logits, target, pixel_mask=mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert DiceCELoss()(logits, target, pixel_mask=torch.ones_like(mask)).item() == pytest.approx(
        DiceCELoss()(logits, target).item(), rel=1e-6)


def test_masked_out_pixels_get_no_gradient() -> None:
    logits, target = _random_case(seed=7)
    logits.requires_grad_(True)
    mask = torch.rand(target.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    DiceCELoss()(logits, target, pixel_mask=mask).backward()
    grad_per_pixel = logits.grad.abs().sum(1)
    assert bool((grad_per_pixel[~mask] == 0).all()) and bool((grad_per_pixel[mask] > 0).all())


def test_pixel_mask_must_match_the_target() -> None:
    logits, target = _random_case()
    with pytest.raises(ValueError, match="pixel_mask must be bool"):
        DiceCELoss()(logits, target, pixel_mask=torch.ones(target.shape))
    with pytest.raises(ValueError, match="pixel_mask must be bool"):
        DiceCELoss()(logits, target, pixel_mask=torch.ones(1, 2, 2, dtype=torch.bool))


def test_confident_cps_uses_only_pixels_the_teacher_is_sure_of() -> None:
    student, _ = _random_case(seed=8, b=1, k=3, h=2, w=4)
    teacher = torch.zeros(1, 3, 2, 4)
    teacher[0, 1, 0] = 10.0   # top row: class 1, softmax peak ~1
    teacher[0, 2, 1] = 0.5    # bottom row: class 2, peak ~0.45
    for kind in ("dice", "ce", "dice_ce"):
        sure = CPSLoss(kind, confidence=0.9)(student, teacher)
        top_only = CPSLoss(kind)(student[:, :, :1].contiguous(), teacher[:, :, :1].contiguous())
        assert sure.item() == pytest.approx(top_only.item(), rel=1e-5)
        assert CPSLoss(kind, confidence=0.3)(student, teacher).item() == pytest.approx(
            CPSLoss(kind)(student, teacher).item(), rel=1e-6)
    student.requires_grad_(True)
    CPSLoss("ce", confidence=0.9)(student, teacher).backward()
    assert student.grad[0, :, 1].abs().sum() == 0 and student.grad[0, :, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="CPS confidence must be in"):
        CPSLoss(confidence=1.0)
