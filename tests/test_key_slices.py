"""Key-slice selection on phantoms with an exact (ground-truth) segmenter and with a real tiny
network; sampling rules for short volumes."""

from __future__ import annotations

import numpy as np
import pytest

from slicevos.inference.reference.key_slices import (
    sample_slices,
    select_key_slices,
)
from slicevos.io.labels import FLARE22
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.windowing import window_volume


class GroundTruthSegmenter:
    """Returns the phantom's true labels for the requested slices (looked up by position)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def segment(self, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        depth = len(self.labels)
        z = np.rint(positions * (depth - 1)).astype(int)
        return self.labels[z]


@pytest.mark.parametrize(("depth", "stride", "expected"), [
    (1, 8, [0]), (5, 8, [2]), (16, 8, [4, 12]), (17, 8, [2, 8, 14]), (10, 1, list(range(10))),
])
def test_sample_slices(depth, stride, expected):
    np.testing.assert_array_equal(sample_slices(depth, stride), expected)


def test_sample_slices_bad_args():
    with pytest.raises(ValueError, match="no slices"):
        sample_slices(0, 4)
    with pytest.raises(ValueError, match="stride"):
        sample_slices(10, 0)


def test_keys_are_largest_sampled_slice_per_organ():
    ph = make_phantom(3, PhantomConfig(shape=(40, 64, 64)))
    image = window_volume(ph.hu)
    keys = select_key_slices(image, GroundTruthSegmenter(ph.labels), FLARE22.num_classes, stride=4)
    sampled_areas = np.stack([np.bincount(ph.labels[z].ravel(), minlength=14) for z in keys.sampled])
    for class_id in range(1, 14):
        if sampled_areas[:, class_id].max() == 0:
            assert class_id not in keys.organ_slice
            continue
        z = keys.organ_slice[class_id]
        assert z in keys.sampled and z in keys.indices
        assert (ph.labels[z] == class_id).sum() == sampled_areas[:, class_id].max()
    assert len(keys.indices) <= len(keys.organ_slice)
    for z, mask in zip(keys.indices, keys.masks, strict=True):
        np.testing.assert_array_equal(mask, ph.labels[z])


def test_absent_organ_and_empty_volume():
    labels = np.zeros((6, 16, 16), np.uint8)
    labels[2, 4:8, 4:8] = 1  # only the liver, on slice 2
    image = np.zeros((6, 3, 16, 16), np.uint8)
    keys = select_key_slices(image, GroundTruthSegmenter(labels), 14, stride=1)
    assert keys.organ_slice == {1: 2}
    np.testing.assert_array_equal(keys.indices, [2])
    nothing = select_key_slices(image, GroundTruthSegmenter(np.zeros_like(labels)), 14, stride=2)
    assert nothing.empty and nothing.masks.shape == (0, 16, 16)


def test_short_volume_uses_middle_slice():
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[:, 2:5, 2:5] = 3
    keys = select_key_slices(np.zeros((3, 3, 8, 8), np.uint8), GroundTruthSegmenter(labels), 14,
                             stride=16)
    np.testing.assert_array_equal(keys.sampled, [1])
    assert keys.organ_slice == {3: 1}
