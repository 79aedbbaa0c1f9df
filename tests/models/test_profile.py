"""profile_model: parameter count, FLOPs (multiply-add = 2) and a forward time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slicevos.models.profile import profile_model


class PointwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=1)

    def forward(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        assert positions.shape == (images.shape[0],)
        return self.conv(images)


def test_profile_counts_parameters_and_flops() -> None:
    result = profile_model(PointwiseNet(), (3, 16, 8), "cpu", repeats=2, batch_size=2)
    assert set(result) == {"params_m", "gflops", "forward_ms"}
    assert result["params_m"] == pytest.approx((3 * 5 + 5) / 1e6)
    assert result["gflops"] == pytest.approx(2 * 3 * 5 * 16 * 8 * 2 / 1e9)
    assert result["forward_ms"] > 0
