"""STCN propagation network: memory read against brute force, shapes in both object modes,
batching over objects, soft aggregation, the training clip forward and the registry tester."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from slicevos.models import ModelConfig, build_model
from slicevos.models.propagation import (
    PropagationModelConfig,
    PropagationNet,
    l2_affinity,
    other_objects,
    read_memory,
    soft_aggregate,
    softmax_topk,
)

from .base import IN_CHANNELS, NUM_CLASSES, ModelTester

TINY: dict[str, Any] = {
    "key_backbone": "mobilenetv3_small_050", "value_backbone": "mobilenetv3_small_050",
    "key_dim": 16, "value_dim": 32, "value_fuser_blocks": 1, "decoder_channels": (32, 16, 16),
}
SIZE = 64


def tiny_net(mode: str = "per_object", seed: int = 0) -> PropagationNet:
    torch.manual_seed(seed)
    cfg = PropagationModelConfig(**TINY, object_mode=mode, num_classes=NUM_CLASSES,
                                 in_channels=IN_CHANNELS)
    return PropagationNet(cfg)


def random_masks(batch: int, objects: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, objects, SIZE, SIZE, generator=gen) > 0.5).float()


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --- memory read (pure functions) -------------------------------------------------------------

def brute_force_read(query_key: torch.Tensor, memory_keys: torch.Tensor,
                     memory_values: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Explicit loops over query and memory positions: softmax of -||k_m - k_q||^2 / sqrt(Ck)."""
    batch, channels, height, width = query_key.shape
    objects, value_channels, frames = memory_values.shape[1:4]
    out = torch.zeros(batch, objects, value_channels, height, width, dtype=torch.float64)
    for b in range(batch):
        for qy in range(height):
            for qx in range(width):
                q = query_key[b, :, qy, qx].double()
                scores, vals = [], []
                for t in range(frames):
                    for my in range(height):
                        for mx in range(width):
                            k = memory_keys[b, :, t, my, mx].double()
                            scores.append(-((k - q) ** 2).sum() / math.sqrt(channels))
                            vals.append(memory_values[b, :, :, t, my, mx].double())
                scores_t = torch.stack(scores)
                if top_k is not None and top_k < len(scores):
                    keep = scores_t.topk(top_k).indices
                    scores_t = torch.full_like(scores_t, -math.inf).index_fill(
                        0, keep, 0) + scores_t
                weights = scores_t.softmax(0)
                out[b, :, :, qy, qx] = sum(w * v for w, v in zip(weights, vals, strict=True))
    return out.float()


def random_memory(batch: int = 2, objects: int = 2, frames: int = 2, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 4, 3, 2, generator=gen)
    keys = torch.randn(batch, 4, frames, 3, 2, generator=gen)
    values = torch.randn(batch, objects, 5, frames, 3, 2, generator=gen)
    return query, keys, values


@pytest.mark.parametrize("top_k", [None, 3])
def test_read_memory_equals_brute_force(top_k: int | None) -> None:
    query, keys, values = random_memory()
    expected = brute_force_read(query, keys, values, top_k)
    torch.testing.assert_close(read_memory(query, keys, values, top_k), expected,
                               rtol=1e-4, atol=1e-5)


def test_topk_at_least_all_positions_is_the_full_softmax() -> None:
    query, keys, values = random_memory()
    positions = keys.shape[2] * keys.shape[3] * keys.shape[4]
    full = read_memory(query, keys, values, None)
    torch.testing.assert_close(read_memory(query, keys, values, positions), full)
    torch.testing.assert_close(read_memory(query, keys, values, positions + 5), full)
    assert not torch.allclose(read_memory(query, keys, values, 2), full)


def test_topk_weights_use_only_k_entries_per_query() -> None:
    gen = torch.Generator().manual_seed(1)
    affinity = l2_affinity(torch.randn(2, 8, 30, generator=gen), torch.randn(2, 8, 7, generator=gen))
    weights = softmax_topk(affinity, 4)
    assert weights.shape == (2, 30, 7)
    assert ((weights > 0).sum(1) == 4).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 7))
    # zeroing every entry outside the top-k leaves the weights unchanged
    top = affinity.topk(4, dim=1).indices
    masked = torch.full_like(affinity, -math.inf).scatter(1, top, affinity.gather(1, top))
    torch.testing.assert_close(masked.softmax(1), weights)


# --- network stages ---------------------------------------------------------------------------

@pytest.mark.parametrize("objects", [1, 2, 3])
def test_stage_shapes_per_object(objects: int) -> None:
    net = tiny_net().eval()
    x = images(2, IN_CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        features = net.encode_key(x)
        assert features.key.shape == (2, 16, 4, 4)
        assert features.f8.shape[-2:] == (8, 8) and features.f4.shape[-2:] == (16, 16)
        values = net.encode_value(x, features.f16, random_masks(2, objects))
        assert values.shape == (2, objects, 32, 4, 4)
        readout = net.read_memory(features.key, features.key.unsqueeze(2).repeat(1, 1, 3, 1, 1),
                                  values.unsqueeze(3).repeat(1, 1, 1, 3, 1, 1), net.config.top_k)
        assert readout.shape == (2, objects, 32, 4, 4)
        logits = net.decode(features, readout)
        assert logits.shape == (2, objects, SIZE, SIZE) and logits.dtype == torch.float32
        assert net.aggregate(logits).shape == (2, objects + 1, SIZE, SIZE)


def test_stage_shapes_joint() -> None:
    net = tiny_net("joint").eval()
    x = images(2, IN_CHANNELS, SIZE, SIZE)
    one_hot = torch.nn.functional.one_hot(torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE)),
                                          NUM_CLASSES).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        features = net.encode_key(x)
        values = net.encode_value(x, features.f16, one_hot)
        assert values.shape == (2, 1, 32, 4, 4)
        readout = net.read_memory(features.key, features.key.unsqueeze(2), values.unsqueeze(3), 5)
        assert net.decode(features, readout).shape == (2, NUM_CLASSES, SIZE, SIZE)
        with pytest.raises(ValueError, match=r"masks of shape \(B=2, K=5, 64, 64\), got \(2, 3"):
            net.encode_value(x, features.f16, one_hot[:, :3])


def test_objects_are_batched_like_separate_runs() -> None:
    net = tiny_net().eval()
    x = images(1, IN_CHANNELS, SIZE, SIZE)
    masks = random_masks(1, 3)
    others = other_objects(masks)
    with torch.no_grad():
        features = net.encode_key(x)
        together = net.encode_value(x, features.f16, masks, others)
        memory_keys = features.key.unsqueeze(2)
        logits = net.decode(features, net.read_memory(features.key, memory_keys,
                                                      together.unsqueeze(3), None))
        for i in range(3):
            alone = net.encode_value(x, features.f16, masks[:, i:i + 1], others[:, i:i + 1])
            torch.testing.assert_close(alone, together[:, i:i + 1], rtol=1e-4, atol=1e-5)
            readout = net.read_memory(features.key, memory_keys, alone.unsqueeze(3), None)
            torch.testing.assert_close(net.decode(features, readout), logits[:, i:i + 1],
                                       rtol=1e-4, atol=1e-4)


def test_other_objects_is_the_union_of_the_others() -> None:
    masks = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert other_objects(masks).flatten().tolist() == [1.0, 1.0, 1.0]
    assert other_objects(masks[:, :2]).flatten().tolist() == [0.0, 1.0]


# --- soft aggregation -------------------------------------------------------------------------

def test_soft_aggregation_sums_to_one_and_keeps_a_confident_object() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=gen) * 4
    probs = PropagationNet.aggregate(logits).softmax(1)
    assert probs.shape == (2, 4, 8, 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 8, 8))
    confident = torch.tensor([-8.0, 10.0, -2.0]).view(1, 3, 1, 1)
    probs = PropagationNet.aggregate(confident).softmax(1).flatten()
    assert probs.argmax() == 2 and probs[2] > 0.99  # channel 0 is background
    nothing = soft_aggregate(torch.zeros(1, 2, 1, 1)).softmax(1).flatten()
    assert nothing.argmax() == 0 and nothing[0] > 0.99


# --- training forward -------------------------------------------------------------------------

@pytest.mark.parametrize("mode,objects", [("per_object", 2), ("joint", NUM_CLASSES)])
def test_forward_clip_shapes_and_gradients_reach_both_encoders(mode: str, objects: int) -> None:
    net = tiny_net(mode).train()
    clip = images(2, 3, IN_CHANNELS, SIZE, SIZE)
    first = random_masks(2, objects)
    out = net.forward_clip(clip, first)
    channels = objects if mode == "joint" else objects + 1
    assert out.logits.shape == out.probabilities.shape == (2, 2, channels, SIZE, SIZE)
    out_objects = channels if mode == "joint" else objects
    assert out.object_logits.shape == (2, 2, out_objects, SIZE, SIZE)
    torch.testing.assert_close(out.probabilities.sum(2), torch.ones(2, 2, SIZE, SIZE))
    out.logits[:, 1].square().mean().backward()
    for encoder in (net.key_encoder, net.value_encoder):
        grads = [p.grad for p in encoder.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_forward_is_forward_clip() -> None:
    net = tiny_net().eval()
    clip, first = images(1, 3, IN_CHANNELS, SIZE, SIZE), random_masks(1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(clip, first).logits, net.forward_clip(clip, first).logits)


# --- errors and registry ----------------------------------------------------------------------

def test_bad_sizes_and_shapes_raise_clear_errors() -> None:
    net = tiny_net().eval()
    with pytest.raises(ValueError, match=r"divisible by 16, got 72x64.*pad to \(80, 64\)"):
        net.encode_key(torch.rand(1, IN_CHANNELS, 72, 64))
    with pytest.raises(ValueError, match="built for 3 image channels, got 1"):
        net.encode_key(torch.rand(1, 1, SIZE, SIZE))
    x = torch.rand(1, IN_CHANNELS, SIZE, SIZE)
    f16 = net.encode_key(x).f16
    with pytest.raises(ValueError, match=r"masks of shape \(B=1, O, 64, 64\), got \(1, 2, 32, 32\)"):
        net.encode_value(x, f16, torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match=r"forward_clip expects images of shape \(B, T >= 2"):
        net.forward_clip(torch.rand(1, IN_CHANNELS, SIZE, SIZE), random_masks(1, 1))


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="object_mode must be 'per_object' or 'joint'"):
        PropagationModelConfig(object_mode="both")
    with pytest.raises(ValueError, match=r"'vit_tiny_patch16_224' has feature strides \(16, 16.*"
                                         r"needs strides \(4, 8, 16\)"):
        PropagationNet(PropagationModelConfig(**{**TINY, "key_backbone": "vit_tiny_patch16_224"}))


def test_registry_builds_both_modes() -> None:
    for mode in ("per_object", "joint"):
        net = build_model(ModelConfig("stcn", False, {**TINY, "object_mode": mode}), NUM_CLASSES)
        assert isinstance(net, PropagationNet) and net.config.object_mode == mode
        assert net.num_classes == NUM_CLASSES and net.in_channels == IN_CHANNELS


def test_paper_defaults_build_resnet50_and_resnet18() -> None:
    net = PropagationNet()
    assert net.key_encoder.channels == [256, 512, 1024]
    assert net.config.top_k == 20 and net.config.key_dim == 64 and net.config.value_dim == 512
    assert 40e6 <= sum(p.numel() for p in net.parameters()) <= 45e6


class TestSTCN(ModelTester):
    """The shared registry tester; STCN has no ``forward(images, positions)``, so the checks
    that call it are replaced by clip-forward equivalents and the position checks by the
    absence of position parameters."""

    model_name = "stcn"
    params = TINY

    def clip_logits(self, model: torch.nn.Module, height: int, width: int,
                    batch: int = 2) -> torch.Tensor:
        clip = images(batch, 3, IN_CHANNELS, height, width)
        first = (images(batch, 2, height, width, seed=1) > 0.5).float()
        return model(clip, first).logits

    @pytest.mark.parametrize("size_index", [0, 1])
    def test_forward_backward(self, size_index: int) -> None:
        height, width = self.sizes[size_index]
        model = self.build().train()
        logits = self.clip_logits(model, height, width)
        assert logits.shape == (2, 2, 3, height, width)
        logits.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in model.parameters())

    def test_eval_batch_of_one_keeps_batch_axis(self) -> None:
        with torch.no_grad():
            logits = self.clip_logits(self.build().eval(), *self.sizes[0], batch=1)
        assert logits.shape == (1, 2, 3, *self.sizes[0])

    def test_save_load_gives_identical_outputs(self, tmp_path) -> None:
        source, target = self.build(seed=0).eval(), self.build(seed=1).eval()
        with torch.no_grad():
            expected = self.clip_logits(source, *self.sizes[1])
            assert not torch.equal(self.clip_logits(target, *self.sizes[1]), expected)
            torch.save(source.state_dict(), tmp_path / "weights.pt")
            target.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
            assert torch.equal(self.clip_logits(target, *self.sizes[1]), expected)

    def test_position_changes_output(self) -> None:
        pytest.skip("STCN takes no slice position")

    def test_position_ignored_when_disabled(self) -> None:
        for flag in (True, False):
            assert not any("position" in n for n, _ in self.build(flag).named_parameters())

    def test_bad_size_raises_clear_error(self) -> None:
        with pytest.raises(ValueError, match=r"divisible by 16, got 72x64.*pad to \(80, 64\)"):
            self.clip_logits(self.build().eval(), 72, 64)

    def test_missing_or_bad_positions_raise(self) -> None:
        pytest.skip("STCN takes no slice position")
