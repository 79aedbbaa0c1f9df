"""Clips of slices for the propagation module: shapes, determinism, gap curriculum, direction,
objects, alignment of masks and images, schema-free label ids."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slicevos.data.cache import SliceCache
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.data.clip_sampling import ClipKey, curriculum_max_gap
from slicevos.data.clips import ClipData, ClipDataConfig
from slicevos.errors import InputError
from tests.conftest import phantom_cache

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUGMENT = REPO / "configs" / "augment" / "default.yaml"
HEAVY_AUGMENT = [{"name": "Affine", "p": 1.0, "rotate": [20, 30], "scale": [0.9, 1.1]},
                 {"name": "GaussNoise", "p": 1.0, "std_range": [0.02, 0.05]}]
LIVER = 1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 labeled phantoms, 24x64x64, FLARE22 labels."""
    return phantom_cache(tmp_path_factory.mktemp("clips"), n_labeled=2, seed=0)


def _config(cache_dir: Path, **kwargs) -> ClipDataConfig:
    defaults = {"crop_size": (48, 40), "batch_size": 4, "min_object_pixels": 10,
                "max_gap_end": 9, "gap_curriculum_iterations": 100}
    return ClipDataConfig(cache_dir=str(cache_dir), **{**defaults, **kwargs})


def _keys(data: ClipData, steps: range, per_step: int = 8) -> list[tuple[int, ClipKey]]:
    return [(s, data.train_dataset.key(s, i)) for s in steps for i in range(per_step)]


def test_batch_shapes_dtypes_and_values(cache_dir: Path) -> None:
    data = ClipData(_config(cache_dir, augment=str(DEFAULT_AUGMENT)))
    batch = data.batch(0)
    assert batch.images.shape == (4, 3, 3, 48, 40) and batch.images.dtype == torch.float32
    assert 0 <= batch.images.min() and batch.images.max() <= 1 and batch.images.max() > 0.5
    assert batch.masks.shape == (4, 3, 2, 48, 40) and batch.masks.dtype == torch.float32
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    assert batch.object_ids.shape == (4, 2) and batch.object_ids.dtype == torch.int64
    assert batch.valid.shape == (4, 2) and batch.valid.dtype == torch.bool
    assert batch.frames.shape == (4, 3) and batch.frames.dtype == torch.int64
    assert batch.positions.shape == (4, 3) and batch.positions.dtype == torch.float32
    assert torch.allclose(batch.positions, batch.frames / 23)
    assert len(batch) == 4 and data.in_channels == 3
    assert torch.equal(batch.to("cpu").masks, batch.masks)
    targets = batch.targets()
    assert targets.shape == (4, 3, 48, 40) and targets.dtype == torch.int64
    assert torch.equal(targets == 2, batch.masks[:, :, 1].bool())
    assert torch.equal(targets == 0, batch.masks.sum(2) == 0)
    assert batch.labels.shape == (4, 3, 48, 40) and batch.labels.dtype == torch.int64
    for b, o in torch.nonzero(batch.valid).tolist():  # every object's mask is its label id
        assert torch.equal(batch.labels[b] == batch.object_ids[b, o], batch.masks[b, :, o] > 0)


def test_objects_present_in_frame_0_and_padding_invalid(cache_dir: Path) -> None:
    data = ClipData(_config(cache_dir, augment=str(DEFAULT_AUGMENT)))
    counts = []
    for step in range(6):
        batch = data.batch(step)
        assert batch.valid[:, 0].all()
        first_frame_pixels = batch.masks[:, 0].sum((-2, -1))  # (B, O)
        assert (first_frame_pixels[batch.valid] >= 10).all()
        assert (batch.object_ids[batch.valid] > 0).all()
        assert (batch.object_ids[~batch.valid] == 0).all()
        assert (batch.masks.sum((1, 3, 4))[~batch.valid] == 0).all()
        assert (batch.masks.sum(2) <= 1).all()  # objects never overlap
        for ids, key in zip(batch.object_ids.tolist(), batch.keys, strict=True):
            assert set(ids) - {0} <= set(key.object_ids)
        counts += batch.valid.sum(1).tolist()
    assert set(counts) == {1, 2}


def test_batches_are_a_pure_function_of_seed_rank_step(cache_dir: Path) -> None:
    config = _config(cache_dir, augment=str(DEFAULT_AUGMENT))
    first, second = ClipData(config), ClipData(config)
    for step in (0, 7):
        a, b = first.batch(step), second.batch(step)
        assert a.keys == b.keys and torch.equal(a.images, b.images)
        assert torch.equal(a.masks, b.masks) and torch.equal(a.object_ids, b.object_ids)
    assert first.batch(1).keys != first.batch(2).keys
    assert ClipData(config, rank=1).batch(1).keys != first.batch(1).keys
    other_seed = ClipData(_config(cache_dir, augment=str(DEFAULT_AUGMENT), seed=5))
    assert other_seed.batch(1).keys != first.batch(1).keys
    dataset = pickle.loads(pickle.dumps(first.train_dataset))
    assert torch.equal(dataset[(7, 1)]["images"], a.images[1])
    from_loader = list(first.loader(start_step=6, stop_step=8, workers=1))
    assert [b.keys for b in from_loader] == [first.batch(6).keys, a.keys]
    assert torch.equal(from_loader[1].masks, a.masks)
    assert torch.equal(from_loader[1].labels, a.labels)


def test_gap_curriculum_grows_and_bounds_the_gaps(cache_dir: Path) -> None:
    config = _config(cache_dir)
    assert [config.max_gap(s) for s in (0, 50, 100, 10_000)] == [1, 5, 9, 9]
    assert curriculum_max_gap(3, 2, 10, 0) == 10
    data = ClipData(config)
    largest = {}
    for step, key in _keys(data, range(0, 160, 4)):
        gaps = np.abs(np.diff(key.frames))
        assert (gaps >= 1).all() and (gaps <= config.max_gap(step)).all()
        assert all(0 <= z < 24 for z in key.frames)
        largest[step] = max(largest.get(step, 0), int(gaps.max()))
    assert largest[0] == largest[4] == 1  # max_gap(4) = round(1.32) = 1
    assert max(largest[s] for s in range(100, 160, 4)) >= 7
    wide = ClipData(_config(cache_dir, min_gap=2, max_gap_start=2))
    assert all((np.abs(np.diff(k.frames)) >= 2).all() for _, k in _keys(wide, range(20)))


def test_clip_direction_is_random_both_ways(cache_dir: Path) -> None:
    keys = [k for _, k in _keys(ClipData(_config(cache_dir)), range(100))]
    reversed_ = np.mean([k.frames[1] < k.frames[0] for k in keys])
    assert 0.35 < reversed_ < 0.65
    assert all(np.all(np.diff(k.frames) > 0) or np.all(np.diff(k.frames) < 0) for k in keys)
    forward_only = ClipData(_config(cache_dir, reverse_probability=0.0))
    for _, key in _keys(forward_only, range(50)):
        room_up = 23 - key.frames[0]
        assert (key.frames[1] > key.frames[0]) == (room_up >= 2)  # down only without room


def test_masks_are_aligned_with_the_image(cache_dir: Path) -> None:
    """Without augmentation each frame is an exact window of the cached slice, and the masks
    are the labels of the same window."""
    data = ClipData(_config(cache_dir))
    cache = SliceCache(cache_dir)
    for step in range(3):
        batch = data.batch(step)
        for b, key in enumerate(batch.keys):
            full_image, full_labels = (cache.image(key.case_id), cache.labels(key.case_id))
            offset = None
            for t, z in enumerate(key.frames):
                image = np.rint(batch.images[b, t].numpy() * 255).astype(np.uint8)
                if offset is None:  # the window position, from frame 0
                    offset = next((y, x) for y in range(64 - 48 + 1) for x in range(64 - 40 + 1)
                                  if np.array_equal(full_image[z, :, y:y + 48, x:x + 40], image))
                y, x = offset
                assert np.array_equal(full_image[z, :, y:y + 48, x:x + 40], image)
                assert np.array_equal(batch.labels[b, t].numpy(),
                                      full_labels[z, y:y + 48, x:x + 40])
                for o, object_id in enumerate(batch.object_ids[b].tolist()):
                    expected = full_labels[z, y:y + 48, x:x + 40] == object_id
                    assert np.array_equal(batch.masks[b, t, o].numpy().astype(bool),
                                          expected & (object_id > 0))


def test_augmented_masks_follow_the_image(cache_dir: Path) -> None:
    """With rotation + noise, the abdomen-window intensity inside the liver masks still
    matches the liver's in the cache, and differs from the rest of the slice."""
    data = ClipData(_config(cache_dir, augment=HEAVY_AUGMENT, max_objects=1,
                            crop_size=(64, 64)))
    cache = SliceCache(cache_dir)
    liver_means = [cache.image(c)[:, 0][cache.labels(c) == LIVER].mean() / 255
                   for c in cache.labeled_cases]
    inside, outside = [], []
    for step in range(12):
        batch = data.batch(step)
        is_liver = (batch.masks[:, :, 0] > 0) & (batch.object_ids[:, :1, None, None] == LIVER
                                                  )[:, None, 0]
        inside.append(batch.images[:, :, 0][is_liver])
        outside.append(batch.images[:, :, 0][~is_liver & (batch.images[:, :, 0] > 0.1)])
    inside, outside = torch.cat(inside), torch.cat(outside)
    assert inside.numel() > 500
    assert inside.mean().item() == pytest.approx(np.mean(liver_means), abs=0.03)
    assert abs(outside.mean().item() - inside.mean().item()) > 0.05


def test_one_augmentation_for_the_whole_clip(cache_dir: Path) -> None:
    data = ClipData(_config(cache_dir, augment=HEAVY_AUGMENT))
    key = ClipKey("phantom_0000", (15, 15, 15), (LIVER,), seed=123)
    sample = data.train_dataset[key]
    images, masks = sample["images"], sample["masks"]
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    assert torch.equal(masks[0], masks[2]) and masks[0, 0].sum() >= 10
    cache = SliceCache(cache_dir)
    unrotated = cache.image("phantom_0000")[15, 0, 8:56, 12:52] / 255
    assert not np.allclose(images[0, 0].numpy(), unrotated, atol=0.05)


def test_labels_hold_every_class_not_only_the_objects(cache_dir: Path) -> None:
    """Joint-mode training needs the full label map: frames show classes beyond the 1-2
    sampled objects, and the padding of a crop larger than the slice is background."""
    data = ClipData(_config(cache_dir, max_objects=1))
    extra = 0
    for step in range(4):
        batch = data.batch(step)
        for b in range(len(batch)):
            present = set(batch.labels[b].unique().tolist()) - {0}
            extra += len(present - set(batch.object_ids[b].tolist()))
    assert extra > 0
    padded = ClipData(_config(cache_dir, crop_size=(80, 72))).batch(0)
    assert padded.labels.shape[-2:] == (80, 72)
    assert (padded.labels[padded.images.sum(2) == 0] == 0).all()


def test_labels_of_the_objects_only(cache_dir: Path) -> None:
    """label_classes="objects": the labels hold the clip's objects only (as its masks do)."""
    config = _config(cache_dir, max_objects=3)
    every = ClipData(config).batch(2)
    only = ClipData(_config(cache_dir, max_objects=3, label_classes="objects")).batch(2)
    assert only.keys == every.keys and torch.equal(only.masks, every.masks)
    from_masks = (only.masks * only.object_ids[:, None, :, None, None]).sum(2).long()
    assert torch.equal(only.labels, from_masks)
    assert not torch.equal(only.labels, every.labels)  # other classes were there


def test_validation_clips(cache_dir: Path) -> None:
    data = ClipData(_config(cache_dir, val_cases=("phantom_0001",), augment=HEAVY_AUGMENT))
    assert data.train_cases == ["phantom_0000"] and data.val_cases == ["phantom_0001"]
    assert {k.case_id for _, k in _keys(data, range(10))} == {"phantom_0000"}
    val = data.val_batch(0, batch_size=6)
    assert len(val) == 6 and {k.case_id for k in val.keys} == {"phantom_0001"}
    assert val.keys == data.val_batch(0, batch_size=6).keys != data.val_batch(1, 6).keys
    gaps = np.abs(np.diff(val.frames.numpy(), axis=1))
    assert gaps.max() <= 9 and gaps.max() > 1  # max_gap_end from the start
    with pytest.raises(InputError, match="no validation cases"):
        ClipData(_config(cache_dir)).val_batch(0)


def test_any_label_id_is_an_object(cache_dir: Path, tmp_path: Path) -> None:
    """A cache whose labels use ids outside the FLARE schema (e.g. 117 TotalSegmentator
    classes) and has no class_areas.npy still yields clips of those ids."""
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    for case_dir in (copy / "cases").iterdir():
        labels = np.load(case_dir / "labels.npy")
        np.save(case_dir / "labels.npy", np.where(labels > 0, labels + 100, 0).astype(np.uint8))
        (case_dir / "class_areas.npy").unlink()
    data = ClipData(_config(copy))
    ids = torch.cat([data.batch(s).object_ids for s in range(5)])
    assert ids[ids > 0].min() > 100


def test_bad_settings_raise_input_errors(cache_dir: Path) -> None:
    with pytest.raises(InputError, match="data.clip_length = 1 is invalid"):
        _config(cache_dir, clip_length=1)
    with pytest.raises(InputError, match="data.max_gap_start = 1 is invalid"):
        _config(cache_dir, min_gap=2)
    with pytest.raises(InputError, match="data.label_source"):
        _config(cache_dir, label_source="totalseg")
    with pytest.raises(InputError, match="data.label_classes"):
        _config(cache_dir, label_classes="some")
    with pytest.raises(InputError, match="holds an object of >= 100000 pixels"):
        ClipData(_config(cache_dir, min_object_pixels=100_000))
    with pytest.raises(InputError, match="room for 30 frames"):
        ClipData(_config(cache_dir, clip_length=30))


@pytest.mark.real
def test_totalsegmentator_cache_gives_many_object_tracks(real_data, tmp_path):
    """The 'objects' schema caches any label id (here TotalSegmentator's 117 classes), and clips
    then follow structures beyond the FLARE organs."""
    from slicevos.data.clips import ClipData, ClipDataConfig

    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    case = real_data / "example_ct_sm30"
    (ds / "imagesTr" / "sm30_0000.nii.gz").symlink_to(case / "ct.nii.gz")
    (ds / "labelsTr" / "sm30.nii.gz").symlink_to(case / "label_totalseg.nii.gz")
    prepare_cache(ds, tmp_path / "cache", PrepareConfig(schema="objects", workers=1),
                  progress=False)
    data = ClipData(ClipDataConfig(cache_dir=str(tmp_path / "cache"), crop_size=(64, 64),
                                   batch_size=8, min_object_pixels=20, max_gap_end=3))
    ids = set()
    for step in range(6):
        batch = data.batch(step)
        ids |= set(batch.object_ids[batch.valid].tolist())
    assert max(ids) > 13  # objects beyond the FLARE id range were sampled
    assert len(ids) >= 8
