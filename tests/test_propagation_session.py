"""Propagation sessions in both object modes (per_object, joint): output contract, key slices,
fusion weights, edge cases, memory bound, feature caching and re-propagation of only the
segments next to a corrected key; joint-mode specifics (one-hot key masks, class ids out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicevos.errors import InputError
from slicevos.inference.engines.stcn.engine import Propagator, fuse_directions
from slicevos.inference.engines.stcn.memory_bank import FeatureCache, MemoryBank
from slicevos.models.propagation import KeyFeatures, PropagationModelConfig, PropagationNet

HEIGHT, WIDTH = 48, 64
NUM_CLASSES = 10  # joint mode: class ids 0..9 (the key masks use 3, 7 and 9)
MODES = ("per_object", "joint")


def make_net(mode: str) -> PropagationNet:
    torch.manual_seed(0)
    return PropagationNet(PropagationModelConfig(
        key_backbone="mobilenetv3_small_050", value_backbone="mobilenetv3_small_050",
        key_dim=16, value_dim=32, value_fuser_blocks=1, decoder_channels=(32, 16, 16),
        in_channels=3, object_mode=mode, num_classes=NUM_CLASSES))


@pytest.fixture(scope="module", params=MODES)
def net(request: pytest.FixtureRequest) -> PropagationNet:
    return make_net(request.param)


@pytest.fixture(scope="module")
def joint_net() -> PropagationNet:
    return make_net("joint")


def possible_labels(net: PropagationNet, object_ids: set[int]) -> set[int]:
    """Labels a session may write: the key objects (per_object) or any class id (joint)."""
    return set(range(NUM_CLASSES)) if net.joint else {0, *object_ids}


def volume(depth: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (depth, 3, height, width), np.uint8)


def key_mask(height: int = HEIGHT, width: int = WIDTH, ids: tuple[int, ...] = (3, 7),
             shift: int = 0) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for i, label in enumerate(ids):
        mask[8 + 12 * i + shift:18 + 12 * i + shift, 10:40] = label
    return mask


def propagator(net: PropagationNet, **kwargs) -> Propagator:
    return Propagator(net, feature_dtype=torch.float32, **kwargs)


def test_output_contract_and_exact_key_slices(net: PropagationNet) -> None:
    session = propagator(net).start(volume(10))
    first, second = key_mask(), key_mask(ids=(7, 9), shift=4)
    session.add_mask(2, first)
    session.add_mask(7, second)
    labels = session.run()
    assert labels.shape == (10, HEIGHT, WIDTH) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[2], first)
    np.testing.assert_array_equal(labels[7], second)
    assert session.object_ids == [3, 7, 9]
    assert set(np.unique(labels)) <= possible_labels(net, {3, 7, 9})
    assert session.stats.decoded_slices == 2 * 4 + 2 + 2  # segment (2, 7) twice + both ends


def test_generator_yields_every_non_key_slice_once(net: PropagationNet) -> None:
    session = propagator(net).start(volume(12))
    session.add_mask(3, key_mask())
    session.add_mask(8, key_mask(shift=2))
    yielded = [z for z, labels in session.propagate()]
    assert sorted(yielded) == [z for z in range(12) if z not in (3, 8)]
    assert list(session.propagate()) == []  # nothing out of date any more


def test_fuse_directions_weights_by_distance() -> None:
    fwd, bwd = torch.ones(2, 3, 3), torch.zeros(2, 3, 3)
    torch.testing.assert_close(fuse_directions(fwd, bwd, 3, 2, 6), torch.full((2, 3, 3), 0.75))
    torch.testing.assert_close(fuse_directions(fwd, bwd, 5, 2, 6), torch.full((2, 3, 3), 0.25))
    torch.testing.assert_close(fuse_directions(fwd, bwd, 4, 2, 6), torch.full((2, 3, 3), 0.5))
    with pytest.raises(ValueError, match="z_left < z < z_right"):
        fuse_directions(fwd, bwd, 2, 2, 6)


@pytest.mark.parametrize("z", [0, 4, 8])
def test_single_key_propagates_both_ways(net: PropagationNet, z: int) -> None:
    session = propagator(net).start(volume(9))
    session.add_mask(z, key_mask())
    yielded = [s for s, _ in session.propagate()]
    assert sorted(yielded) == [s for s in range(9) if s != z]
    assert session.stats.decoded_slices == 8  # one direction per slice
    np.testing.assert_array_equal(session.labels[z], key_mask())


def test_adjacent_keys_and_first_last_keys(net: PropagationNet) -> None:
    session = propagator(net).start(volume(8))
    for z in (0, 3, 4, 7):
        session.add_mask(z, key_mask(shift=z))
    labels = session.run()
    for z in (0, 3, 4, 7):
        np.testing.assert_array_equal(labels[z], key_mask(shift=z))
    assert session.stats.decoded_slices == 2 * 2 + 2 * 2  # segments (0, 3) and (4, 7) only


def test_one_slice_volume(net: PropagationNet) -> None:
    session = propagator(net).start(volume(1))
    session.add_mask(0, key_mask())
    assert list(session.propagate()) == []
    np.testing.assert_array_equal(session.run(), key_mask()[None])


def test_padding_for_sizes_off_the_stride(net: PropagationNet) -> None:
    session = propagator(net).start(volume(5, 40, 56))
    session.add_mask(1, key_mask(40, 56))
    labels = session.run()
    assert labels.shape == (5, 40, 56)
    np.testing.assert_array_equal(labels[1], key_mask(40, 56))


def test_bad_inputs(net: PropagationNet) -> None:
    session = propagator(net).start(volume(4))
    with pytest.raises(ValueError, match="no key slice"):
        session.run()
    with pytest.raises(ValueError, match=r"expected \(H, W\) = \(48, 64\)"):
        session.add_mask(1, np.zeros((64, 48), np.uint8))
    with pytest.raises(ValueError, match="outside the volume of 4 slices"):
        session.add_mask(4, key_mask())
    with pytest.raises(ValueError, match=r"uint8 volume \(D, C=3, H, W\)"):
        propagator(net).start(volume(4)[:, :2])


def test_empty_key_gives_background(net: PropagationNet) -> None:
    session = propagator(net).start(volume(4))
    session.add_mask(1, np.zeros((HEIGHT, WIDTH), np.uint8))
    assert not session.run().any()


def test_memory_bound_respected_in_long_pass(net: PropagationNet) -> None:
    session = propagator(net, memory_every=1, max_memory_frames=3).start(volume(12))
    session.add_mask(0, key_mask())
    session.run()
    assert session.stats.peak_recent_frames == 3
    bank = MemoryBank(max_recent=3)
    key, value = torch.zeros(4, 2, 2), torch.zeros(2, 5, 2, 2)
    bank.add_key(0, key, value)
    for z in range(1, 8):
        bank.add_recent(z, key + z, value)
    assert bank.frame_indices == [0, 5, 6, 7]
    keys, values = bank.stacked()
    assert keys.shape == (1, 4, 4, 2, 2) and values.shape == (1, 2, 5, 4, 2, 2)
    assert keys[0, 0, 1, 0, 0] == 5  # the oldest recent frames were dropped


def test_half_storage_on_cpu(net: PropagationNet) -> None:
    prop = Propagator(net, feature_dtype=torch.float16, features_on_cpu=True)
    session = prop.start(volume(6))
    session.add_mask(2, key_mask())
    assert session.run().shape == (6, HEIGHT, WIDTH)
    assert session.engine.features._items[0].f4.dtype == torch.float16
    assert session.engine.features.get(0).f4.dtype == torch.float32


def test_feature_cache_lru() -> None:
    cache = FeatureCache("cpu", torch.float32, max_slices=2)
    for z in range(3):
        cache.put(z, KeyFeatures(*(torch.full((1, 1, 1, 1), float(z)),) * 4))
    assert 0 not in cache and 1 in cache and 2 in cache and len(cache) == 2
    cache.get(1)  # now the most recently used
    cache.put(3, KeyFeatures(*(torch.zeros(1, 1, 1, 1),) * 4))
    assert 1 in cache and 2 not in cache


def test_key_features_computed_once_per_slice(net: PropagationNet,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    original = net.encode_key

    def counting(images: torch.Tensor):
        encoded.append(images.shape[0])
        return original(images)

    monkeypatch.setattr(net, "encode_key", counting)
    session = propagator(net, key_batch_size=3).start(volume(10))
    session.add_mask(2, key_mask())
    session.add_mask(6, key_mask(shift=3))
    session.run()
    session.add_mask(4, key_mask(shift=1))
    session.run()
    assert sum(encoded) == 10 == session.stats.key_encoded_slices
    assert max(encoded) <= 3


def test_repropagation_touches_only_neighbouring_segments(net: PropagationNet) -> None:
    session = propagator(net).start(volume(12))
    session.add_mask(2, key_mask())
    session.add_mask(8, key_mask(shift=3))
    before = session.run().copy()
    decoded = session.stats.decoded_slices
    session.add_mask(5, key_mask(ids=(3,), shift=1))
    yielded = sorted(z for z, _ in session.propagate())
    assert yielded == [3, 4, 6, 7]
    assert session.stats.decoded_slices - decoded == 2 * 4  # two 2-key segments of 2 slices
    for z in (0, 1, 2, 8, 9, 10, 11):
        np.testing.assert_array_equal(session.labels[z], before[z])
    np.testing.assert_array_equal(session.labels[5], key_mask(ids=(3,), shift=1))


def test_repropagation_to_volume_end(net: PropagationNet) -> None:
    session = propagator(net).start(volume(10))
    session.add_mask(4, key_mask())
    before = session.run().copy()
    session.add_mask(7, key_mask(shift=2))
    assert sorted(z for z, _ in session.propagate()) == [5, 6, 8, 9]
    np.testing.assert_array_equal(session.labels[:4], before[:4])


def test_session_fuses_each_middle_slice_with_its_keys(net: PropagationNet,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from slicevos.inference import tracks as session_module

    calls: list[tuple[int, int, int]] = []

    def spy(prob_fwd, prob_bwd, z, z_left, z_right, *confidences):
        calls.append((z, z_left, z_right))
        channels = NUM_CLASSES if net.joint else 3  # background + 2 objects
        assert prob_fwd.shape == prob_bwd.shape == (channels, HEIGHT, WIDTH)
        return fuse_directions(prob_fwd, prob_bwd, z, z_left, z_right, *confidences)

    monkeypatch.setattr(session_module, "fuse_directions", spy)
    session = propagator(net).start(volume(10))
    session.add_mask(1, key_mask())
    session.add_mask(5, key_mask(shift=2))
    session.run()
    assert sorted(calls) == [(2, 1, 5), (3, 1, 5), (4, 1, 5)]


def test_memory_values_per_mode(net: PropagationNet) -> None:
    """per_object: one memory value per object; joint: one per key slice, whatever the objects
    (so a new object does not re-encode the other keys)."""
    session = propagator(net).start(volume(8))
    session.add_mask(1, key_mask(ids=(3,)))
    session.add_mask(4, key_mask(ids=(3, 7, 9)))
    session.run()
    assert session.engine._key_value(1).shape[0] == (1 if net.joint else 3)
    encodings = session.stats.value_encodings
    session.add_mask(6, key_mask(ids=(2,)))  # a new object; slices 5 and 7 are re-propagated
    assert (4 in session.engine._key_values) == net.joint
    session.run()
    # segment (4, 6) needs the values of keys 4 and 6; joint re-encodes only the new key
    assert session.stats.value_encodings - encodings == (1 if net.joint else 2)


def test_joint_key_values_from_one_hot_class_masks(joint_net: PropagationNet,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The value encoder gets the one-hot class mask of the key (K channels summing to 1, the
    padding background); recent frames get the class probabilities."""
    seen: list[torch.Tensor] = []
    original = joint_net.encode_value

    def spy(images, f16, masks, others=None):
        seen.append(masks.detach().clone())
        return original(images, f16, masks, others)

    monkeypatch.setattr(joint_net, "encode_value", spy)
    mask = key_mask(40, 56)
    session = propagator(joint_net, memory_every=2).start(volume(6, 40, 56))
    session.add_mask(0, mask)
    session.run()
    key, recent = seen[0], seen[1:]
    assert key.shape == (1, NUM_CLASSES, 48, 64)
    torch.testing.assert_close(key.sum(1), torch.ones(1, 48, 64))
    np.testing.assert_array_equal(key[0, :, :40, :56].argmax(0).numpy(), mask)
    assert (key[0, 0, 40:] == 1).all() and (key[0, 0, :, 56:] == 1).all()
    assert len(recent) == 2 and all(r.shape == key.shape for r in recent)
    torch.testing.assert_close(recent[0].sum(1), torch.ones(1, 48, 64))
    assert ((recent[0] > 0) & (recent[0] < 1)).any()  # soft probabilities, not one-hot


def test_joint_labels_are_class_ids(joint_net: PropagationNet,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Joint mode: the argmax of the class probabilities is the label itself, even a class
    that no key holds (per_object would map channels to key objects)."""
    def decode(features, readout):
        logits = torch.zeros(1, NUM_CLASSES, *features.f4.shape[-2:])
        logits[:, 5] = 10.0
        return torch.nn.functional.interpolate(logits, scale_factor=4)

    monkeypatch.setattr(joint_net, "decode", decode)
    session = propagator(joint_net).start(volume(5))
    session.add_mask(0, key_mask())
    labels = session.run()
    assert (labels[1:] == 5).all()
    np.testing.assert_array_equal(labels[0], key_mask())


def test_joint_rejects_ids_beyond_its_classes(joint_net: PropagationNet) -> None:
    session = propagator(joint_net).start(volume(4))
    with pytest.raises(InputError, match="class ids 0..9"):
        session.add_mask(1, key_mask(ids=(3, NUM_CLASSES)))
    assert session.key_slices == []  # the bad key was not taken
    session.add_mask(1, key_mask(ids=(3, NUM_CLASSES - 1)))
    assert session.run().shape == (4, HEIGHT, WIDTH)
