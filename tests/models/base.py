"""Shared tester for every registered segmentation network (smp ``tests/models/base.py`` style).

A subclass names the model and gives a tiny ``params`` dict; pytest collects the subclass
(``Test*``) and runs every check below on it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from slicevos.models import ModelConfig, build_model

NUM_CLASSES = 5
IN_CHANNELS = 3


class ModelTester:
    model_name: ClassVar[str]
    params: ClassVar[dict[str, Any]]
    sizes: ClassVar[tuple[tuple[int, int], ...]] = ((64, 64), (96, 80))

    def build(self, position_encoding: bool = True, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = ModelConfig(self.model_name, position_encoding, dict(self.params))
        return build_model(cfg, NUM_CLASSES, IN_CHANNELS)

    @staticmethod
    def inputs(height: int, width: int, batch: int = 2, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        images = torch.rand(batch, IN_CHANNELS, height, width, generator=gen)
        positions = torch.linspace(0.0, 1.0, batch)
        return images, positions

    def test_attributes(self) -> None:
        model = self.build()
        assert model.num_classes == NUM_CLASSES
        assert model.in_channels == IN_CHANNELS
        assert all(h % model.output_stride == 0 and w % model.output_stride == 0
                   for h, w in self.sizes)

    @pytest.mark.parametrize("size_index", [0, 1])
    def test_forward_backward(self, size_index: int) -> None:
        height, width = self.sizes[size_index]
        model = self.build().train()
        images, positions = self.inputs(height, width)
        logits = model(images, positions)
        assert logits.shape == (2, NUM_CLASSES, height, width)
        assert logits.dtype == torch.float32
        logits.square().mean().backward()
        named = list(model.named_parameters())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in named)
        first_name, first = named[0]
        assert "encoder" in first_name and first.grad.abs().sum() > 0

    def test_eval_batch_of_one_keeps_batch_axis(self) -> None:
        model = self.build().eval()
        images, positions = self.inputs(*self.sizes[0], batch=1)
        with torch.no_grad():
            assert model(images, positions).shape == (1, NUM_CLASSES, *self.sizes[0])

    def test_save_load_gives_identical_outputs(self, tmp_path) -> None:
        source, target = self.build(seed=0).eval(), self.build(seed=1).eval()
        images, positions = self.inputs(*self.sizes[1])
        with torch.no_grad():
            expected = source(images, positions)
            assert not torch.equal(target(images, positions), expected)
            torch.save(source.state_dict(), tmp_path / "weights.pt")
            target.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
            assert torch.equal(target(images, positions), expected)

    def test_position_changes_output(self) -> None:
        model = self.build().eval()
        image, _ = self.inputs(*self.sizes[0], batch=1)
        with torch.no_grad():
            low = model(image, torch.tensor([0.1]))
            high = model(image, torch.tensor([0.9]))
        assert (low - high).abs().max() > 1e-4

    def test_position_ignored_when_disabled(self) -> None:
        model = self.build(position_encoding=False).eval()
        assert not any("position" in name for name, _ in model.named_parameters())
        image, _ = self.inputs(*self.sizes[0], batch=1)
        with torch.no_grad():
            low = model(image, torch.tensor([0.1]))
            assert torch.equal(low, model(image, torch.tensor([0.9])))
            assert torch.equal(low, model(image, None))

    def test_bad_size_raises_clear_error(self) -> None:
        model = self.build().eval()
        stride = model.output_stride
        images, positions = self.inputs(64 + stride // 2, 64)
        expected = rf"divisible by {stride}, got {64 + stride // 2}x64.*pad to \({64 + stride}, 64\)"
        with pytest.raises(ValueError, match=expected):
            model(images, positions)

    def test_missing_or_bad_positions_raise(self) -> None:
        model = self.build().eval()
        images, _ = self.inputs(*self.sizes[0])
        with pytest.raises(ValueError, match="got no positions"):
            model(images, None)
        with pytest.raises(ValueError, match=r"positions of shape \(2,\), got \(3,\)"):
            model(images, torch.zeros(3))
