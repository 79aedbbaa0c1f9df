"""Post-processing never deletes what was drawn: per-class component rules from the schema,
drawn components kept whole, several tumors kept through the whole semi-automatic pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from slicevos.benchmarks.baselines import nearest_key_copy
from slicevos.inference.config import InferenceConfig
from slicevos.inference.pipeline import VolumePipeline
from slicevos.inference.postprocess import clean_components
from slicevos.io.labels import FLARE22, FLARE23, OBJECTS
from slicevos.io.volume import Geometry, Volume
from slicevos.metrics.overlap import dice
from slicevos.phantom import PhantomConfig, make_phantom

LIVER, AORTA, TUMOR = FLARE23.id_of("liver"), FLARE23.id_of("aorta"), FLARE23.id_of("tumor")


def _box(labels: np.ndarray, value: int, z: slice, y: slice, x: slice) -> None:
    labels[z, y, x] = value


def test_schema_declares_which_classes_are_one_piece() -> None:
    one_piece = {c.name for c in FLARE23.classes if c.one_piece}
    assert {"liver", "spleen", "right_kidney", "left_kidney", "gallbladder"} <= one_piece
    assert not one_piece & {"tumor", "aorta", "inferior_vena_cava", "esophagus", "pancreas",
                            "duodenum"}
    assert not any(c.one_piece for c in OBJECTS.classes)


def test_one_piece_organ_loses_stray_parts_multi_part_classes_keep_all() -> None:
    labels = np.zeros((20, 32, 32), np.uint8)
    _box(labels, LIVER, slice(2, 12), slice(2, 14), slice(2, 14))      # liver body
    _box(labels, LIVER, slice(15, 17), slice(20, 22), slice(20, 22))   # stray liver speck
    _box(labels, TUMOR, slice(2, 4), slice(20, 24), slice(2, 6))       # three lesions
    _box(labels, TUMOR, slice(8, 10), slice(20, 24), slice(10, 14))
    _box(labels, TUMOR, slice(14, 16), slice(26, 30), slice(26, 30))
    _box(labels, AORTA, slice(0, 8), slice(28, 31), slice(2, 5))       # aorta cut in two
    _box(labels, AORTA, slice(12, 20), slice(28, 31), slice(10, 13))
    out = clean_components(labels, FLARE23)
    assert out.dtype == labels.dtype and out.shape == labels.shape
    assert (out[15:17, 20:22, 20:22] == 0).all()                       # speck gone
    expected = labels.copy()
    expected[15:17, 20:22, 20:22] = 0
    np.testing.assert_array_equal(out, expected)                       # nothing else moved
    np.testing.assert_array_equal(clean_components(labels, OBJECTS), labels)


def test_drawn_components_survive_whole_even_when_small() -> None:
    labels = np.zeros((20, 32, 32), np.uint8)
    _box(labels, LIVER, slice(2, 12), slice(2, 14), slice(2, 14))
    _box(labels, LIVER, slice(14, 19), slice(20, 24), slice(20, 24))   # a drawn second part
    drawn = {16: labels[16].copy()}
    out = clean_components(labels, FLARE23, drawn)
    np.testing.assert_array_equal(out, labels)                         # kept, every slice
    # a drawn pixel of another class does not protect the liver part under it
    other = {16: np.where(labels[16] > 0, FLARE23.id_of("spleen"), 0).astype(np.uint8)}
    assert (clean_components(labels, FLARE23, other)[14:19] == 0).all()


def _tube_volume() -> tuple[Volume, np.ndarray]:
    """A synthetic CT with a bright tube that splits into two (a split aorta) above z=10."""
    depth, size = 40, 48
    hu = np.full((depth, size, size), -100.0, np.float32)
    truth = np.zeros((depth, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for z in range(depth):
        centres = [(24, 24)] if z < 10 else [(24, 12 + z // 8), (24, 36 - z // 8)]
        for cy, cx in centres:
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
            hu[z][disk], truth[z][disk] = 250.0, AORTA
    hu += np.random.default_rng(0).normal(0, 5, hu.shape).astype(np.float32)
    geometry = Geometry(np.diag([-1.0, -1.0, 2.0, 1.0]), (size, size, depth))
    return Volume(hu, geometry), truth


@pytest.mark.parametrize("organ", ["aorta", "liver"])
def test_two_drawn_parts_of_one_organ_both_survive_between_their_keys(organ: str) -> None:
    """A split structure drawn on keys 15 and 35: both parts are kept on every slice between,
    whether the class may have several parts (aorta) or is one piece (liver)."""
    volume, truth = _tube_volume()
    truth = np.where(truth > 0, FLARE22.id_of(organ), 0).astype(np.uint8)
    keys = {z: truth[z] for z in (15, 35)}
    result = VolumePipeline.from_checkpoints(None, schema=FLARE22).run(volume, keys)
    for z in range(16, 35):
        left, right = result.labels[z, :, :24], result.labels[z, :, 24:]
        assert (left > 0).sum() > 10 and (right > 0).sum() > 10, z


@pytest.fixture(scope="module")
def tumor_phantom():
    # 1.6 mm slices: lesions of 5-18 mm radius span several of them
    config = PhantomConfig(shape=(200, 128, 128), with_tumors=True, tumor_probability=1.0,
                           max_tumors=4, tumor_organs=("liver", "right_kidney", "left_kidney"))
    for seed in range(1000, 1100):
        phantom = make_phantom(seed, config)
        components = _tumor_components(phantom.labels)
        if components >= 3:
            return phantom
    pytest.fail("no phantom with 3 or more separate tumors in 100 seeds")


def _tumor_components(labels: np.ndarray) -> int:
    import cc3d

    return int(cc3d.connected_components(labels == TUMOR, return_N=True)[1])


def test_every_keyed_tumor_survives_and_rules_never_lower_tumor_dsc(tumor_phantom) -> None:
    truth = tumor_phantom.labels
    keys = {z: truth[z] for z in range(1, len(truth), 5)}  # a key every 8 mm
    volume = tumor_phantom.to_volume()
    runs = {}
    for rules in (True, False):
        config = dataclasses.replace(InferenceConfig(), component_rules=rules)
        pipeline = VolumePipeline.from_checkpoints(None, config=config, schema=FLARE23)
        runs[rules] = pipeline.run(volume, keys).labels
    import cc3d

    lesions = cc3d.connected_components(truth == TUMOR)
    keyed = {int(v) for z in keys for v in np.unique(lesions[z]) if v}
    assert len(keyed) >= 3
    # the rules delete no tumor voxel that propagation found, on or off the keys
    propagated = runs[False] == TUMOR
    np.testing.assert_array_equal(runs[True][propagated], TUMOR)
    for lesion in keyed:  # every keyed lesion is in the output, whole on its keys
        on_keys = lesions == lesion
        on_keys[np.setdiff1d(np.arange(len(truth)), list(keys))] = False
        assert (runs[True][on_keys] == TUMOR).all(), lesion
    carried = [lesion for lesion in keyed
               if (propagated & (lesions == lesion) & ~np.isin(np.arange(len(truth)),
                                                               list(keys))[:, None, None]).any()]
    assert len(carried) >= 2  # several lesions reach beyond their keys, all of them kept
    non_key = np.ones(len(truth), bool)
    non_key[list(keys)] = False

    def tumor_dsc(labels: np.ndarray) -> float:
        return dice(truth[non_key] == TUMOR, labels[non_key] == TUMOR)

    copy = nearest_key_copy(keys, len(truth))
    assert tumor_dsc(runs[True]) >= tumor_dsc(runs[False]) - 1e-9
    assert tumor_dsc(runs[True]) >= tumor_dsc(copy)
