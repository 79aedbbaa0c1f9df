"""Losses of the propagation module: OHEM (bootstrapped) cross-entropy and the Lovasz losses,
checked against hand computations and a brute-force Lovasz extension."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slicevos.losses.lovasz import (
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    jaccard_steps,
    lovasz_extension,
    lovasz_hinge,
    lovasz_softmax,
)
from slicevos.losses.ohem import OhemCrossEntropy

# ---------------------------------------------------------------- OHEM cross-entropy


def _two_class_logits(p_true: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, 1, P) logits giving probability p_true[i] to the true class 1 of pixel i."""
    p = torch.tensor(p_true, dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None, :, None]
    return logits, torch.ones(1, 1, len(p_true), dtype=torch.int64)


def test_ohem_averages_exactly_the_hardest_pixels() -> None:
    p_true = [0.9, 0.2, 0.6, 0.05, 0.99, 0.5, 0.7, 0.3]
    logits, target = _two_class_logits(p_true)
    loss = OhemCrossEntropy(top_ratio=0.25)
    # the two hardest pixels are those with p = 0.05 and 0.2
    expected = -(np.log(0.05) + np.log(0.2)) / 2
    assert loss(logits, target).item() == pytest.approx(expected)
    assert loss(logits, target, ratio=0.5).item() == pytest.approx(
        -(np.log(0.05) + np.log(0.2) + np.log(0.3) + np.log(0.5)) / 4)
    assert loss(logits, target, ratio=1.0).item() == pytest.approx(
        F.cross_entropy(logits, target).item())
    assert loss(logits, target, ratio=1e-6).item() == pytest.approx(-np.log(0.05))


def test_ohem_ratio_schedule_is_a_function_of_step() -> None:
    loss = OhemCrossEntropy(top_ratio=0.2, warmup_start=100, warmup_end=300)
    assert [loss.ratio(s) for s in (0, 99, 100, 200, 300, 10_000)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.6, 0.2, 0.2])
    logits, target = _two_class_logits([0.9, 0.2, 0.6, 0.05, 0.99])
    assert loss(logits, target, step=0).item() == pytest.approx(
        F.cross_entropy(logits, target).item())
    assert loss(logits, target, step=300).item() == pytest.approx(-np.log(0.05))
    with pytest.raises(ValueError, match="not both"):
        loss(logits, target, step=1, ratio=0.5)


def test_ohem_ignores_pixels_and_checks_inputs() -> None:
    logits, target = _two_class_logits([0.9, 0.05, 0.6])
    target[0, 0, 1] = 255
    loss = OhemCrossEntropy(top_ratio=0.4, ignore_index=255)  # floor(0.4 * 2) = 0 -> 1 pixel
    assert loss(logits, target).item() == pytest.approx(-np.log(0.6))
    target[...] = 255
    assert loss(logits, target).item() == 0
    with pytest.raises(ValueError, match="class ids in 0..1"):
        loss(logits, torch.full((1, 1, 3), 2))
    with pytest.raises(ValueError, match="expected logits"):
        loss(logits[0], target)
    with pytest.raises(ValueError, match="top_ratio"):
        OhemCrossEntropy(top_ratio=0)


def test_ohem_gradient_reaches_only_the_selected_pixels() -> None:
    logits, target = _two_class_logits([0.9, 0.2, 0.6, 0.05])
    logits.requires_grad_(True)
    OhemCrossEntropy(top_ratio=0.5)(logits, target).backward()
    touched = logits.grad.abs().sum(1)[0, 0] > 0
    assert touched.tolist() == [False, True, False, True]


# ---------------------------------------------------------------- Lovasz


def _jaccard_loss(mispredicted: set[int], truth: set[int]) -> float:
    union = truth | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def _extension_by_integral(errors: np.ndarray, truth: set[int]) -> float:
    """Lovasz extension by its definition ``integral_0^inf J({i: m_i >= t}) dt``, exactly:
    the integrand is constant between consecutive error values."""
    levels = np.unique(np.concatenate([[0.0], errors]))
    total = 0.0
    for low, high in itertools.pairwise(levels):
        above = {i for i, e in enumerate(errors) if e >= (low + high) / 2}
        total += (high - low) * _jaccard_loss(above, truth)
    return total


def _extension_by_permutations(errors: np.ndarray, truth: set[int]) -> float:
    """For the submodular Jaccard loss the extension is the largest greedy sum over every
    order of the pixels (the maximum over the base polytope's vertices)."""
    best = -np.inf
    for order in itertools.permutations(range(len(errors))):
        steps = [_jaccard_loss(set(order[:k + 1]), truth) - _jaccard_loss(set(order[:k]), truth)
                 for k in range(len(order))]
        best = max(best, float(np.dot(errors[list(order)], steps)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_extension_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = 6
    in_set = rng.random(size) < 0.5
    in_set[rng.integers(size)] = True
    errors = rng.random(size)
    truth = set(np.flatnonzero(in_set).tolist())
    fast = lovasz_extension(torch.tensor(errors), torch.tensor(in_set)).item()
    assert fast == pytest.approx(_extension_by_integral(errors, truth))
    assert fast == pytest.approx(_extension_by_permutations(errors, truth))


def test_jaccard_steps_by_hand() -> None:
    # truth {0, 2}; J({0}) = 1/2, J({0,1}) = 2/3, J({0,1,2}) = 1, then 4/4, 5/5
    steps = jaccard_steps(torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]))
    assert steps.tolist() == pytest.approx([1 / 2, 1 / 6, 1 / 3, 0, 0])


def _one_hot_logits(target: torch.Tensor, num_classes: int, scale: float) -> torch.Tensor:
    return scale * F.one_hot(target, num_classes).movedim(-1, 1).double()


def test_lovasz_is_zero_for_a_perfect_prediction() -> None:
    target = torch.randint(0, 3, (2, 5, 7), generator=torch.Generator().manual_seed(0))
    assert lovasz_softmax(_one_hot_logits(target, 3, 60.0), target).item() == pytest.approx(
        0, abs=1e-9)
    binary = (target == 1).double()
    assert lovasz_hinge(2.0 * (2 * binary - 1), binary).item() == 0  # margins >= 1
    assert lovasz_hinge(0.5 * (2 * binary - 1), binary).item() > 0  # inside the margin


def test_lovasz_softmax_matches_brute_force_per_class() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 2, 3, generator=generator, dtype=torch.float64)
    target = torch.tensor([[[0, 1, 1], [0, 0, 1]]])  # class 2 absent
    probs = torch.softmax(logits, 1)[0].reshape(3, -1).numpy()
    flat = target.reshape(-1).numpy()
    per_class = [_extension_by_integral(np.abs((flat == c) - probs[c]),
                                        set(np.flatnonzero(flat == c).tolist())) for c in range(3)]
    assert lovasz_softmax(logits, target).item() == pytest.approx(np.mean(per_class[:2]))
    assert lovasz_softmax(logits, target, classes="all").item() == pytest.approx(
        np.mean(per_class))
    assert per_class[2] == pytest.approx(probs[2].max())


def test_lovasz_hinge_matches_brute_force_and_ignores_pixels() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.5, -0.4, 0.8, 7.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 9.0]])
    errors = np.maximum(1 - logits[0, :5].numpy() * (2 * target[0, :5].numpy() - 1), 0)
    expected = _extension_by_integral(errors, {0, 2, 3})
    assert lovasz_hinge(logits, target, ignore_index=9).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="binary mask"):
        lovasz_hinge(logits, target)


def test_lovasz_per_image_averages_samples() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 4, 4), generator=generator)
    loss = LovaszSoftmaxLoss(per_image=True)
    expected = (lovasz_softmax(logits[:1], target[:1]) + lovasz_softmax(logits[1:], target[1:])) / 2
    assert loss(logits, target).item() == pytest.approx(expected.item())
    assert loss(logits, target).item() != pytest.approx(lovasz_softmax(logits, target).item())


@pytest.mark.parametrize("loss_fn", [LovaszSoftmaxLoss(), LovaszHingeLoss()])
def test_lovasz_decreases_under_optimisation(loss_fn) -> None:
    generator = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 8, 8, generator=generator) < 0.4).long()
    shape = (2, 2, 8, 8) if isinstance(loss_fn, LovaszSoftmaxLoss) else (2, 8, 8)
    logits = torch.randn(shape, generator=generator, requires_grad=True)
    labels = target if isinstance(loss_fn, LovaszSoftmaxLoss) else target.float()
    optimizer = torch.optim.Adam([logits], lr=0.2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert (np.diff(losses) <= 1e-6).mean() > 0.8  # mostly monotone
