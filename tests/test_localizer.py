"""The abdomen localizer: mask-derived labels, balanced batches, the z-range logic, a tiny
localizer trained on tall phantoms (chest to pelvis), checkpoint round trip and bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from slicevos.cli.train_localizer import main as train_main
from slicevos.config import load_config
from slicevos.data.cache import SliceCache, class_areas
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.data.localizer_data import LocalizerData, abdomen_flags, match_windows, organ_ids
from slicevos.errors import InputError
from slicevos.inference.localizer import Localizer, predict_z_range, sampled_slices
from slicevos.io.checkpoint import make_payload, save_checkpoint
from slicevos.io.labels import FLARE22, FLARE23
from slicevos.models.localizer import LocalizerModelConfig, LocalizerNet
from slicevos.phantom import PhantomConfig, make_phantom, write_phantom_dataset
from slicevos.preprocessing.windowing import window_volume
from slicevos.training.localizer import LocalizerConfig, LocalizerTrainer

TINY = Path(__file__).resolve().parents[1] / "configs" / "localizer" / "tiny.yaml"
# 40 slices of ~21 mm from the pelvis (-400 mm) to the upper chest (+450 mm): about a third of
# the slices hold abdominal organs
TALL = PhantomConfig(shape=(40, 64, 64), z_range_mm=(-400.0, 450.0))
PARTIAL = "phantom_0015"  # annotated for liver and spleen only


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tall")
    write_phantom_dataset(root / "ds", n_labeled=16, config=TALL, seed=0, progress=False)
    label_file = root / "ds" / "labelsTr" / f"{PARTIAL}.nii.gz"
    img = nib.load(label_file)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.where(np.isin(data, [1, 3]), data, 0).astype(np.uint8),
                             img.affine, img.header), label_file)
    (root / "ds" / "annotations.yaml").write_text(f"{PARTIAL}: [liver, spleen]\n")
    prepare_cache(root / "ds", root / "cache", PrepareConfig(workers=1), progress=False)
    return root / "cache"


def tiny_config(cache_dir: Path, out: Path, *assignments: str) -> LocalizerConfig:
    return load_config(TINY, LocalizerConfig, assignments=[
        f"data.cache_dir={cache_dir}", f"train.out_dir={out}", "data.val_cases=[phantom_0014]",
        *assignments])


@pytest.fixture(scope="module")
def trained(cache_dir, tmp_path_factory) -> tuple[LocalizerTrainer, dict[str, float], Path]:
    """The tiny localizer, trained with one torch thread (conftest) and deterministic kernels:
    bit-identical weights whatever -n, the test order or the machine's load. 300 iterations,
    not the config's 150: at 150 the inferior end of the range (bowel slices below the lowest
    solid organ look abdominal) lands 2-3 slices early on some unseen phantoms, so the outcome
    of the test depended on the float rounding of the run (issue 13)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    trainer = LocalizerTrainer(tiny_config(cache_dir, out, "train.iterations=300",
                                           "train.optim.milestones=[200, 260]",
                                           "train.deterministic=true"))
    metrics = trainer.fit()
    return trainer, metrics, out


def tiny_organ_ids() -> tuple[int, ...]:
    return organ_ids(FLARE22, load_config(TINY, LocalizerConfig,
                                          assignments=["data.cache_dir=x"]).data.organs)


# ---- labels and data ------------------------------------------------------------------------
def test_abdomen_flags_come_from_the_organ_masks():
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[:, 0, 0] = FLARE22.id_of("aorta")  # a vessel through every slice
    labels[2:4, 3:5, 3:5] = FLARE22.id_of("liver")
    labels[4, 6, 6] = FLARE22.id_of("spleen")  # one voxel is enough
    areas = class_areas(labels, FLARE22.num_classes)
    solid = organ_ids(FLARE22, ["liver", "spleen"])
    assert abdomen_flags(areas, solid).tolist() == [False, False, True, True, True, False]
    assert abdomen_flags(areas, organ_ids(FLARE22, None)).all()
    assert organ_ids(FLARE22, None) == tuple(range(1, 14))
    assert organ_ids(FLARE23, None) == tuple(range(1, 14))  # the tumor lies inside organs
    with pytest.raises(InputError, match="lacks"):
        organ_ids(FLARE22, ["liver", "lung"])


def test_match_windows_by_level_and_width():
    available = [{"name": "abdomen", "level": 40, "width": 400}, "chest", "spine"]
    assert match_windows(available, ["spine", "abdomen"]) == [2, 0]
    assert match_windows(available, [{"level": -600, "width": 1500}]) == [1]
    assert match_windows(["chest"], ["abdomen"]) is None


def test_data_labels_balance_and_determinism(cache_dir):
    cache = SliceCache(cache_dir)
    data = LocalizerData(tiny_config(cache_dir, Path("unused")).data, input_size=64)
    assert data.skipped_cases == [PARTIAL] and PARTIAL not in data.train_cases
    assert data.val_cases == ["phantom_0014"] and len(data.train_cases) == 14
    assert data.channels == [0] and data.windows[0]["level"] == 40
    ids = tiny_organ_ids()
    for case in data.train_cases[:3]:
        expected = np.isin(np.asarray(cache.labels(case)), ids).any(axis=(1, 2))
        np.testing.assert_array_equal(data.flags[case], expected)
    natural = np.mean(np.concatenate([data.flags[c] for c in data.train_cases]))
    drawn = np.concatenate([data.batch(step).target.numpy() for step in range(30)])
    assert natural < 0.4 and abs(drawn.mean() - 0.5) < 0.1  # balanced, not the natural rate
    a, b = data.batch(7), data.batch(7)
    assert a.keys == b.keys and torch.equal(a.image, b.image)
    assert a.image.shape == (16, 1, 64, 64) and a.image.dtype == torch.float32
    for key, target in zip(a.keys, a.target.tolist(), strict=True):
        assert target == float(data.flags[key.case_id][key.z])


def test_data_config_errors(cache_dir):
    base = tiny_config(cache_dir, Path("unused")).data
    with pytest.raises(InputError, match="not all among the cache's windows"):
        LocalizerData(replace(base, windows=({"level": 0, "width": 100},)), 64)
    with pytest.raises(InputError, match="do not annotate every localizer organ"):
        LocalizerData(replace(base, val_cases=(PARTIAL,)), 64)
    with pytest.raises(InputError, match="lacks"):
        LocalizerData(replace(base, organs=("liver", "tumor")), 64)


# ---- the z-range ----------------------------------------------------------------------------
def curve(depth: int, abdomen: tuple[int, int], flips: tuple[int, ...] = ()) -> np.ndarray:
    scores = np.full(depth, 0.1, np.float32)
    scores[abdomen[0]:abdomen[1]] = 0.9
    scores[list(flips)] = 1 - scores[list(flips)]
    return scores


def test_z_range_ignores_isolated_flips():
    scores = curve(60, (20, 40), flips=(3, 25, 33, 52, 59))
    assert predict_z_range(scores, margin_slices=0) == (20, 40)
    assert predict_z_range(scores, margin_slices=0, smooth_slices=1) == (3, 60)  # unsmoothed
    assert predict_z_range(scores, margin_slices=4) == (16, 44)


def test_z_range_none_when_no_abdomen():
    assert predict_z_range(np.full(30, 0.2, np.float32)) is None
    assert predict_z_range(curve(30, (0, 0), flips=(12,))) is None  # a lone flip is noise


def test_z_range_touching_the_ends_and_margin_clamped():
    assert predict_z_range(curve(50, (0, 20)), margin_slices=5) == (0, 25)
    assert predict_z_range(curve(50, (35, 50)), margin_slices=5) == (30, 50)
    assert predict_z_range(np.full(8, 0.95, np.float32), margin_slices=100) == (0, 8)
    assert predict_z_range(curve(50, (10, 30)), threshold=0.95) is None


def test_z_range_bad_input():
    with pytest.raises(InputError):
        predict_z_range(np.zeros((3, 3)))
    with pytest.raises(InputError):
        predict_z_range(np.array([0.5, np.nan]))
    with pytest.raises(InputError):
        predict_z_range(np.zeros(5), smooth_slices=4)
    with pytest.raises(InputError):
        sampled_slices(10, 0)
    assert sampled_slices(10, 4).tolist() == [0, 4, 8, 9]


# ---- training and inference -----------------------------------------------------------------
def range_dice(a: tuple[int, int], b: tuple[int, int]) -> float:
    overlap = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return 2 * overlap / (a[1] - a[0] + b[1] - b[0])


def test_tiny_localizer_finds_the_abdomen_on_unseen_phantoms(trained):
    trainer, metrics, out = trained
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss")]) for r in rows[1:]]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert metrics["accuracy"] > 0.85 and metrics["z_error"] <= 2
    localizer = Localizer.from_checkpoint(out / "last.pt")
    ids = tiny_organ_ids()
    for seed in (100, 101):  # not among the training seeds
        phantom = make_phantom(seed, TALL)
        hits = np.flatnonzero(abdomen_flags(class_areas(phantom.labels, 14), ids))
        truth = (int(hits[0]), int(hits[-1]) + 1)
        assert 8 <= truth[1] - truth[0] <= 20  # the phantom does extend beyond the abdomen
        found = predict_z_range(localizer.slice_scores_hu(phantom.hu), margin_slices=0)
        assert found is not None, seed
        assert abs(found[0] - truth[0]) <= 2 and abs(found[1] - truth[1]) <= 2, (seed, found, truth)
        assert range_dice(found, truth) >= 0.85, (seed, found, truth)


def test_checkpoint_round_trip_and_window_handling(trained):
    trainer, _, out = trained
    localizer = Localizer.from_checkpoint(out / "last.pt")
    assert [(w.level, w.width) for w in localizer.windows] == [(40, 400)]
    phantom = make_phantom(102, TALL)
    three = window_volume(phantom.hu)  # the pipeline's abdomen / chest / spine channels
    scores = localizer.slice_scores(three[:, :1])
    assert scores.shape == (40,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    with torch.no_grad():
        direct = torch.sigmoid(trainer.module.eval()(torch.from_numpy(three[:, :1]).float() / 255))
    np.testing.assert_allclose(scores, direct.numpy(), atol=1e-5)
    np.testing.assert_allclose(localizer.slice_scores(three, windows=["abdomen", "chest", "spine"]),
                               scores, atol=1e-6)
    np.testing.assert_allclose(localizer.slice_scores_hu(phantom.hu), scores, atol=1e-6)
    strided = localizer.slice_scores_hu(phantom.hu, stride=2)
    np.testing.assert_allclose(strided[::2], scores[::2], atol=1e-6)
    assert strided[-1] == pytest.approx(scores[-1], abs=1e-6)
    np.testing.assert_allclose(strided[1:-1:2], (scores[:-2:2] + scores[2::2]) / 2, atol=1e-5)


def test_bad_input(trained, tmp_path):
    _, _, out = trained
    localizer = Localizer.from_checkpoint(out / "last.pt")
    image = np.zeros((4, 3, 32, 32), np.uint8)
    with pytest.raises(InputError, match="trained on 1 window"):
        localizer.slice_scores(image)
    with pytest.raises(InputError, match="slice_scores_hu"):
        localizer.slice_scores(image, windows=["chest", "spine", "chest"])
    with pytest.raises(InputError, match="one window per channel"):
        localizer.slice_scores(image, windows=["abdomen"])
    with pytest.raises(InputError, match="uint8"):
        localizer.slice_scores(image[:, :1].astype(np.float32))
    with pytest.raises(InputError, match="HU volume"):
        localizer.slice_scores_hu(np.zeros((32, 32), np.float32))
    with pytest.raises(InputError, match=r"images \(B, 1, H, W\)"):
        LocalizerNet(LocalizerModelConfig("resnet18", 32))(torch.zeros(2, 3, 32, 32))
    with pytest.raises(InputError, match="model.backbone"):
        LocalizerModelConfig("no_such_net")
    wrong = save_checkpoint(tmp_path / "ref.pt", make_payload("reference_cps", {}, {}, 0))
    with pytest.raises(InputError, match="expected 'localizer'"):
        Localizer.from_checkpoint(wrong)
    with pytest.raises(InputError, match="not found"):
        Localizer.from_checkpoint(tmp_path / "absent.pt")


def test_cli_trains_and_refuses_to_overwrite(cache_dir, tmp_path):
    out = tmp_path / "cli"
    args = ["--config", str(TINY), "--cache", str(cache_dir), "--out", str(out),
            "--iterations", "2", "--set", "data.val_cases=[phantom_0014]"]
    assert train_main(args) == 0
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert Localizer.from_checkpoint(out / "best.pt").model.input_size == 64
    assert train_main(args) == 2  # an existing run is not overwritten silently


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_shipped_configs_build_their_network(name):
    config = load_config(TINY.with_name(f"{name}.yaml"), LocalizerConfig)
    net = LocalizerNet(config.model, in_channels=len(config.data.windows)).eval()
    params_m = sum(p.numel() for p in net.parameters()) / 1e6
    assert (10 < params_m < 12) if name == "default" else params_m < 1.0
    assert config.model.input_size == (256 if name == "default" else 64)
    with torch.no_grad():  # any slice size in, one logit per slice out
        assert net(torch.rand(3, 1, 80, 72)).shape == (3,)


def test_checkpoint_with_mismatched_weights_is_refused(trained, tmp_path):
    _, _, out = trained
    payload = torch.load(out / "last.pt", weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if "fc" not in k}
    broken = save_checkpoint(tmp_path / "broken.pt", payload)
    with pytest.raises(InputError, match="do not fit"):
        Localizer.from_checkpoint(broken)
