"""Relative slice position and the FiLM position encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicevos.models.reference.position import (
    SlicePositionFiLM,
    relative_position,
    sinusoidal_features,
)


def test_relative_position_numpy_and_scalars() -> None:
    result = relative_position(np.array([0, 2, 4]), 5)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, [0.0, 0.5, 1.0])
    assert relative_position(3, 4) == pytest.approx(1.0)
    np.testing.assert_array_equal(relative_position([0, 1], 3), np.array([0.0, 0.5], np.float32))


def test_relative_position_tensor_keeps_type() -> None:
    result = relative_position(torch.tensor([0, 9]), 10)
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
    torch.testing.assert_close(result, torch.tensor([0.0, 1.0]))


def test_single_slice_volume_is_centred() -> None:
    assert relative_position(0, 1) == pytest.approx(0.5)
    torch.testing.assert_close(relative_position(torch.tensor([0]), 1), torch.tensor([0.5]))


@pytest.mark.parametrize(("z", "depth"), [(5, 5), (-1, 5), (np.array([0, 7]), 4)])
def test_relative_position_out_of_range_raises(z, depth) -> None:
    with pytest.raises(ValueError, match=f"volume of {depth} slices"):
        relative_position(z, depth)


def test_relative_position_rejects_empty_volume() -> None:
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        relative_position(0, 0)


def test_sinusoidal_features_values() -> None:
    features = sinusoidal_features(torch.tensor([0.0, 0.5]), num_frequencies=3)
    assert features.shape == (2, 6)
    # p = 0: sin terms 0, cos terms 1; p = 0.5: angles pi/2, pi, 2 pi
    expected_half = [1.0, 0.0, 0.0, 0.0, -1.0, 1.0]
    torch.testing.assert_close(features[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(features[1], torch.tensor(expected_half), atol=1e-6, rtol=0)


def test_film_is_near_identity_at_init_but_not_exactly() -> None:
    torch.manual_seed(0)
    film = SlicePositionFiLM([8, 4])
    features = torch.randn(2, 8, 5, 5)
    embedding = film.embed(torch.tensor([0.0, 1.0]))
    out = film.modulate(0, features, embedding)
    change = (out - features).abs().max()
    assert 0 < change < 0.5 * features.abs().max()
    assert not torch.equal(out[0] - features[0], out[1] - features[1])


def test_film_modulate_formula() -> None:
    film = SlicePositionFiLM([2], num_frequencies=1, hidden_dim=4)
    with torch.no_grad():
        film.heads[0].weight.zero_()
        film.heads[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0, 3.0]))  # gamma (2), beta (2)
    features = torch.ones(1, 2, 1, 1)
    out = film.modulate(0, features, film.embed(torch.tensor([0.3])))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.5 + 2.0, 0.0 + 3.0]))


def test_embedding_depends_on_position_and_gets_gradients() -> None:
    torch.manual_seed(0)
    film = SlicePositionFiLM([3])
    features = torch.randn(2, 3, 4, 4)
    out = film.modulate(0, features, film.embed(torch.tensor([0.2, 0.7])))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in film.parameters())
