"""Slice batches from the cache: shapes, determinism, splits, partial labels, crops, augmentation."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from slicevos.config import from_dict
from slicevos.data.augment import augment_slice, build_augmentation
from slicevos.data.cache import SliceCache
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.data.slices import SliceData, SliceDataConfig
from slicevos.errors import InputError, InputWarning
from slicevos.io.labels import LabelClass, LabelSchema
from slicevos.io.nifti import load_labels, save_labels
from slicevos.phantom import PhantomConfig, write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUGMENT = REPO / "configs" / "augment" / "default.yaml"
PARTIAL_CASE, PARTIAL_CLASSES = "phantom_0002", (1, 3)  # liver and spleen only
VAL_CASE = "phantom_0001"
ROTATE = [{"name": "Affine", "p": 1.0, "rotate": [25, 35], "scale": [1.05, 1.1]}]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 labeled (one annotated for liver + spleen only) + 2 unlabeled phantoms, 12x64x64."""
    root = tmp_path_factory.mktemp("slice_data")
    dataset = root / "dataset"
    write_phantom_dataset(dataset, n_labeled=3, n_unlabeled=2,
                          config=PhantomConfig(shape=(12, 64, 64)), seed=0, progress=False)
    label_path = dataset / "labelsTr" / f"{PARTIAL_CASE}.nii.gz"
    labels, geometry = load_labels(label_path)
    labels[~np.isin(labels, (0, *PARTIAL_CLASSES))] = 0
    save_labels(labels, geometry, label_path)
    (dataset / "annotations.yaml").write_text(f"{PARTIAL_CASE}: [liver, spleen]\n")
    prepare_cache(dataset, root / "cache", PrepareConfig(schema="flare22", workers=1),
                  progress=False)
    return root / "cache"


def _config(cache_dir: Path, **kwargs) -> SliceDataConfig:
    defaults = {"crop_size": (48, 40), "batch_labeled": 4, "batch_unlabeled": 3,
                "val_cases": (VAL_CASE,)}
    return SliceDataConfig(cache_dir=str(cache_dir), **{**defaults, **kwargs})


def _keys(data: SliceData, kind: str, steps: range) -> list:
    return [k for s in steps for k in data.batch(kind, s).keys]


def test_batch_shapes_dtypes_and_positions(cache_dir: Path) -> None:
    data = SliceData(_config(cache_dir, augment=str(DEFAULT_AUGMENT)))
    batch = data.labeled_batch(0)
    assert batch.image.shape == (4, 3, 48, 40) and batch.image.dtype == torch.float32
    assert 0 <= batch.image.min() and batch.image.max() <= 1 and batch.image.max() > 0.5
    assert batch.target.shape == (4, 48, 40) and batch.target.dtype == torch.int64
    assert batch.annotated.shape == (4, 14) and batch.annotated.dtype == torch.bool
    assert batch.position.shape == (4,) and batch.position.dtype == torch.float32
    expected = [k.z / (SliceCache(cache_dir).num_slices(k.case_id) - 1) for k in batch.keys]
    assert batch.position.tolist() == pytest.approx(expected)
    unlabeled = data.unlabeled_batch(0)
    assert unlabeled.image.shape == (3, 3, 48, 40)
    assert unlabeled.target is None and unlabeled.annotated is None
    positions = torch.cat([data.labeled_batch(s).position for s in range(10)])
    assert positions.min() >= 0 and positions.max() <= 1 and positions.unique().numel() > 3
    moved = batch.to("cpu")
    assert torch.equal(moved.image, batch.image) and moved.keys == batch.keys


def test_batches_are_a_pure_function_of_seed_rank_step(cache_dir: Path) -> None:
    config = _config(cache_dir, augment=str(DEFAULT_AUGMENT))
    first, second = SliceData(config), SliceData(config)
    for kind in ("labeled", "unlabeled"):
        a, b = first.batch(kind, 7), second.batch(kind, 7)
        assert a.keys == b.keys and torch.equal(a.image, b.image)
        if kind == "labeled":
            assert torch.equal(a.target, b.target)
        other_step = first.batch(kind, 8)
        assert not torch.equal(other_step.image, a.image)
        other_rank = SliceData(config, rank=1).batch(kind, 7)
        assert other_rank.keys != a.keys and not torch.equal(other_rank.image, a.image)
        other_seed = SliceData(replace(config, seed=1)).batch(kind, 7)
        assert other_seed.keys != a.keys


def test_dataloader_workers_yield_the_in_process_batches(cache_dir: Path) -> None:
    data = SliceData(_config(cache_dir, augment=str(DEFAULT_AUGMENT)))
    loader = data.loader("labeled", start_step=3, stop_step=6, workers=2)
    batches = list(loader)
    assert len(batches) == 3
    for step, batch in zip(range(3, 6), batches, strict=True):
        expected = data.labeled_batch(step)
        assert batch.keys == expected.keys
        assert torch.equal(batch.image, expected.image) and torch.equal(batch.target, expected.target)
    dataset = pickle.loads(pickle.dumps(data.dataset("unlabeled")))
    key = data.dataset("unlabeled").key(2, 1)
    assert torch.equal(dataset[key]["image"], data.unlabeled_batch(2).image[1])


def test_validation_cases_are_never_drawn(cache_dir: Path) -> None:
    data = SliceData(_config(cache_dir, unlabeled_from_labeled=True))
    assert data.val_cases == [VAL_CASE]
    assert data.train_cases == ["phantom_0000", PARTIAL_CASE]
    assert VAL_CASE not in data.unlabeled_cases and "phantom_0000" in data.unlabeled_cases
    drawn = {k.case_id for kind in ("labeled", "unlabeled") for k in _keys(data, kind, range(40))}
    assert VAL_CASE not in drawn
    assert drawn == {"phantom_0000", PARTIAL_CASE, "phantom_u0000", "phantom_u0001"}
    # without unlabeled_from_labeled only the unlabeled scans feed unlabeled batches
    only_unlabeled = SliceData(_config(cache_dir))
    assert {k.case_id for k in _keys(only_unlabeled, "unlabeled", range(20))} == {
        "phantom_u0000", "phantom_u0001"}
    # val_fraction holds out a fully annotated case, never the partial one
    by_fraction = SliceData(_config(cache_dir, val_cases=(), val_fraction=0.3))
    assert len(by_fraction.val_cases) == 1 and by_fraction.val_cases[0] != PARTIAL_CASE
    assert sorted(by_fraction.train_cases + by_fraction.val_cases) == SliceCache(cache_dir).labeled_cases


def test_partially_labeled_case_gets_its_annotated_mask(cache_dir: Path) -> None:
    data = SliceData(_config(cache_dir))
    expected = np.zeros(14, bool)
    expected[[0, *PARTIAL_CLASSES]] = True
    assert data.annotated(PARTIAL_CASE).tolist() == expected.tolist()
    assert data.annotated("phantom_0000").all()
    seen_partial = 0
    for step in range(20):
        batch = data.labeled_batch(step)
        for key, annotated, target in zip(batch.keys, batch.annotated, batch.target, strict=True):
            if key.case_id == PARTIAL_CASE:
                seen_partial += 1
                assert annotated.tolist() == expected.tolist()
                assert set(target.unique().tolist()) <= {0, *PARTIAL_CLASSES}
            else:
                assert annotated.all()
    assert seen_partial > 0
    # a FLARE23 model on this FLARE22 cache: the tumor (14) is never drawn
    flare23 = SliceData(_config(cache_dir), schema="flare23")
    assert flare23.num_classes == 15
    assert flare23.labeled_batch(0).annotated[:, 14].tolist() == [False] * 4


def test_slices_smaller_than_the_crop_are_padded_with_zeros(cache_dir: Path) -> None:
    data = SliceData(_config(cache_dir, crop_size=(80, 96)))
    cache = SliceCache(cache_dir)
    batch = data.labeled_batch(0)
    assert batch.image.shape == (4, 3, 80, 96)
    for key, image, target in zip(batch.keys, batch.image, batch.target, strict=True):
        raw_image, raw_labels = cache.slice(key.case_id, key.z)
        inner = (slice(8, 72), slice(16, 80))  # (80 - 64) / 2 rows, (96 - 64) / 2 columns
        assert torch.equal(image[(slice(None), *inner)], torch.from_numpy(raw_image / 255).float())
        assert torch.equal(target[inner], torch.from_numpy(raw_labels.astype(np.int64)))
        outside = torch.ones(80, 96, dtype=torch.bool)
        outside[inner] = False
        assert image[:, outside].abs().max() == 0 and target[outside].max() == 0


def test_crops_larger_slices_and_centres_on_foreground(cache_dir: Path) -> None:
    cache = SliceCache(cache_dir)

    def hits(bias: float) -> tuple[int, int]:
        data = SliceData(_config(cache_dir, crop_size=(12, 12), foreground_bias=bias))
        with_fg = found = 0
        for step in range(25):
            batch = data.labeled_batch(step)
            for key, target in zip(batch.keys, batch.target, strict=True):
                if cache.labels(key.case_id)[key.z].any():
                    with_fg += 1
                    found += int(target.any())
        return found, with_fg

    found, with_fg = hits(1.0)
    assert with_fg > 20 and found == with_fg
    found_random, with_fg_random = hits(0.0)
    assert found_random < with_fg_random


def test_foreground_slice_weight_favours_slices_with_organs(cache_dir: Path) -> None:
    cache = SliceCache(cache_dir)

    def background_only(weight: float) -> int:
        data = SliceData(_config(cache_dir, foreground_slice_weight=weight))
        return sum(not cache.labels(k.case_id)[k.z].any() for k in _keys(data, "labeled", range(30)))

    assert background_only(1.0) > 0
    assert background_only(1e6) == 0


def test_augmentation_keeps_labels_on_their_organ(cache_dir: Path) -> None:
    cache = SliceCache(cache_dir)
    z = int(np.argmax(cache.class_areas("phantom_0000")[:, 1]))  # slice with the most liver
    image, labels = cache.slice("phantom_0000", z)
    pipeline = build_augmentation(ROTATE)
    out_image, out_labels = augment_slice(pipeline, image, labels, seed=3)
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert out_labels.shape == labels.shape and out_labels.dtype == np.uint8
    assert set(np.unique(out_labels)) <= set(np.unique(labels))  # nearest-neighbour labels
    liver, moved_liver = labels == 1, out_labels == 1
    assert (liver != moved_liver).sum() > 0.2 * liver.sum()  # it really moved
    before = image[0][liver].mean()  # abdomen window
    assert abs(out_image[0][moved_liver].mean() - before) < 4
    assert abs(out_image[0][liver & ~moved_liver].mean() - before) > 10  # stale mask: off
    again = augment_slice(pipeline, image, labels, seed=3)
    assert np.array_equal(again[0], out_image) and np.array_equal(again[1], out_labels)
    assert not np.array_equal(augment_slice(pipeline, image, labels, seed=4)[0], out_image)


def test_augment_spec_errors_and_defaults(tmp_path: Path) -> None:
    default = build_augmentation(DEFAULT_AUGMENT)
    names = [type(t).__name__ for t in default.transforms]
    assert names[0] == "Affine" and "HorizontalFlip" not in names and "OneOf" in names
    assert build_augmentation(None) is None and build_augmentation([]) is None
    with pytest.raises(InputError, match=r"unknown albumentations transform 'Afine' \(did you "
                       r"mean Affine"):
        build_augmentation([{"name": "Afine"}])
    with pytest.raises(InputError, match=r"bad arguments for Affine: .*rotat"):
        build_augmentation([{"name": "Affine", "rotat": 5}])
    with pytest.raises(InputError, match="has no 'name'"):
        build_augmentation([{"p": 0.5}])
    bad = tmp_path / "aug.yaml"
    bad.write_text("transform:\n  - name: Affine\n")
    with pytest.raises(InputError, match=r"aug\.yaml: expected a list of transforms or"):
        build_augmentation(bad)
    with pytest.warns(InputWarning, match="HorizontalFlip mirrors left and right"):
        build_augmentation([{"name": "HorizontalFlip", "p": 0.5}])


def test_config_and_cache_errors(cache_dir: Path) -> None:
    with pytest.raises(InputError, match=r"val_cases \['nope'\] are not in the cache"):
        SliceData(_config(cache_dir, val_cases=("nope",)))
    with pytest.raises(InputError, match=r"val_cases \['phantom_u0000'\] are unlabeled"):
        SliceData(_config(cache_dir, val_cases=("phantom_u0000",)))
    with pytest.raises(InputError, match="set only one of them"):
        SliceData(_config(cache_dir, val_fraction=0.5))
    with pytest.raises(InputError, match="no labeled case left for training"):
        SliceData(_config(cache_dir, val_cases=("phantom_0000", VAL_CASE, PARTIAL_CASE)))
    with pytest.raises(InputError, match=r"data\.crop_size = \(0, 8\) is invalid"):
        _config(cache_dir, crop_size=(0, 8))
    with pytest.raises(InputError, match=r"data\.foreground_bias = 1\.5 is invalid"):
        _config(cache_dir, foreground_bias=1.5)
    liver_only = LabelSchema("liver_only", (LabelClass(1, "liver"),))
    with pytest.raises(InputError, match=r"class ids \[2, 3, .*liver_only lacks"):
        SliceData(_config(cache_dir), schema=liver_only)
    with pytest.raises(InputError, match=r"data\.batch_unlabeled is 0"):
        SliceData(_config(cache_dir, batch_unlabeled=0)).unlabeled_batch(0)


def test_config_loads_from_yaml_mapping(cache_dir: Path) -> None:
    config = from_dict(SliceDataConfig, {"cache_dir": str(cache_dir), "crop_size": [32, 32],
                                         "augment": [{"name": "GaussNoise", "p": 1.0}],
                                         "val_cases": [VAL_CASE]})
    assert config.crop_size == (32, 32) and config.val_cases == (VAL_CASE,)
    assert isinstance(config.augment, tuple)
    assert SliceData(config).labeled_batch(0).image.shape == (2, 3, 32, 32)
