"""CPS reference training end to end on phantoms: learns, resumes exactly, runs from the CLI,
and handles partial labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from slicevos.cli.train_reference import main as train_main
from slicevos.config import load_config
from slicevos.data.cache import SliceCache
from slicevos.data.cache_build import PrepareConfig, prepare_cache
from slicevos.inference.reference.segmenter import ReferenceSegmenter
from slicevos.inference.validation import volume_dice
from slicevos.io.checkpoint import load_checkpoint
from slicevos.io.labels import FLARE22
from slicevos.models.reference.cps import build_cps_pair
from slicevos.phantom import PhantomConfig, write_phantom_dataset
from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

TINY = Path(__file__).resolve().parents[2] / "configs" / "reference" / "tiny.yaml"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "ds", n_labeled=3, n_unlabeled=2,
                          config=PhantomConfig(shape=(20, 64, 64)), seed=0, progress=False)
    # phantom_0002 becomes a partially labeled case: only liver (1) and spleen (3) drawn
    label_file = root / "ds" / "labelsTr" / "phantom_0002.nii.gz"
    img = nib.load(label_file)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.where(np.isin(data, [1, 3]), data, 0).astype(np.uint8),
                             img.affine, img.header), label_file)
    (root / "ds" / "annotations.yaml").write_text("phantom_0002: [liver, spleen]\n")
    prepare_cache(root / "ds", root / "cache", PrepareConfig(schema="flare22", workers=1),
                  progress=False)
    return root / "cache"


def tiny_config(cache_dir: Path, out: Path, *assignments: str) -> ReferenceConfig:
    return load_config(TINY, ReferenceConfig, assignments=[
        f"data.cache_dir={cache_dir}", f"train.out_dir={out}", *assignments])


def test_tiny_cps_run_learns_the_liver(cache_dir, tmp_path):
    config = tiny_config(cache_dir, tmp_path / "run", "train.iterations=120",
                         "train.val_every=120", "train.log_every=20",
                         "data.val_cases=[phantom_0000]")
    trainer = ReferenceTrainer(config)
    metrics = trainer.fit()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train/loss_sup")]) for r in rows[1:]]
    assert losses[-1] < 0.75 * losses[0]
    assert "train/loss_cps" in header
    # phantom_0000 was held out for validation; score a training phantom too
    assert metrics["dice/liver"] > 0.5
    segmenter = ReferenceSegmenter(trainer.module, "cpu", batch_size=16)
    train_scores = volume_dice(segmenter, SliceCache(cache_dir), ["phantom_0001"], FLARE22)
    assert train_scores["dice/liver"] >= 0.7


def test_checkpoint_alone_rebuilds_the_pair(cache_dir, tmp_path):
    config = tiny_config(cache_dir, tmp_path / "run", "train.iterations=2",
                         "train.checkpoint_every=2", "train.val_every=2",
                         "data.val_cases=[phantom_0000]")
    ReferenceTrainer(config).fit()
    payload = load_checkpoint(tmp_path / "run" / "last.pt", kind="reference_cps")
    rebuilt_config = load_config(TINY, ReferenceConfig)  # only to get the dataclass types
    from slicevos.config import from_dict

    stored = from_dict(ReferenceConfig, payload["config"])
    assert stored.model == rebuilt_config.model
    pair = build_cps_pair(stored.model, FLARE22.num_classes, 3)
    pair.load_state_dict(payload["model"])
    x, pos = torch.rand(2, 3, 64, 64), torch.tensor([0.2, 0.8])
    assert pair.eval().predict_proba(x, pos).shape == (2, 14, 64, 64)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_gives_identical_weights(cache_dir, tmp_path):
    common = ("train.checkpoint_every=3", "train.val_every=100", "train.log_every=1",
              "data.val_cases=[phantom_0000]")
    ReferenceTrainer(tiny_config(cache_dir, tmp_path / "full", "train.iterations=6", *common)).fit()
    ReferenceTrainer(tiny_config(cache_dir, tmp_path / "cut", "train.iterations=3", *common)).fit()
    ReferenceTrainer(tiny_config(cache_dir, tmp_path / "cut", "train.iterations=6", *common),
                     resume=True).fit()
    full, resumed = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_supervised_mode_and_cli(cache_dir, tmp_path):
    out = tmp_path / "sup"
    code = train_main(["--config", str(TINY), "--cache", str(cache_dir), "--out", str(out),
                       "--iterations", "2", "--mode", "supervised", "--set",
                       "data.val_cases=[phantom_0000]", "--set", "train.checkpoint_every=2"])
    assert code == 0
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_cps" not in header and "val/dice_mean" in header
    # refusing to silently overwrite an existing run
    assert train_main(["--config", str(TINY), "--cache", str(cache_dir), "--out", str(out),
                       "--iterations", "2"]) == 2


def test_partial_case_annotated_mask(cache_dir):
    cache = SliceCache(cache_dir)
    meta = cache.meta("phantom_0002")
    assert sorted(meta["annotated_class_ids"]) == [1, 3]
    labels = np.asarray(cache.labels("phantom_0002"))
    assert set(np.unique(labels)) <= {0, 1, 3}


def test_checkpoint_to_key_slices(cache_dir, tmp_path):
    """A trained checkpoint alone gives a segmenter (schema, windows) that picks key slices."""
    from slicevos.inference.reference.key_slices import select_key_slices
    from slicevos.phantom import make_phantom
    from slicevos.preprocessing.windowing import window_volume

    config = tiny_config(cache_dir, tmp_path / "run", "train.iterations=2",
                         "train.checkpoint_every=2", "train.val_every=2",
                         "data.val_cases=[phantom_0000]")
    ReferenceTrainer(config).fit()
    segmenter = ReferenceSegmenter.from_checkpoint(tmp_path / "run" / "last.pt", batch_size=4)
    assert segmenter.info.schema is FLARE22 and len(segmenter.info.windows) == 3
    phantom = make_phantom(5, PhantomConfig(shape=(18, 80, 72)))  # non-square, not a crop size
    image = window_volume(phantom.hu, segmenter.info.windows)
    keys = select_key_slices(image, segmenter, FLARE22.num_classes, stride=4)
    np.testing.assert_array_equal(keys.sampled, [1, 5, 8, 12, 16])
    assert keys.areas.shape == (5, 14) and keys.areas.sum(1).tolist() == [80 * 72] * 5
    assert keys.masks.shape == (len(keys.indices), 80, 72) and keys.masks.dtype == np.uint8
    prediction = segmenter.predict(image[:3], np.array([0.0, 0.5, 1.0]), keep_probabilities=True)
    np.testing.assert_allclose(prediction.probabilities.sum(1), 1.0, atol=1e-5)
    assert prediction.disagreement.shape == (3,)


def test_flare23_schema_on_a_flare22_cache(cache_dir, tmp_path):
    """Tumor (id 14) becomes an output class that no case annotated: training still runs."""
    config = tiny_config(cache_dir, tmp_path / "run", "schema=flare23", "train.iterations=2",
                         "train.checkpoint_every=2", "train.val_every=2",
                         "data.val_cases=[phantom_0000]")
    trainer = ReferenceTrainer(config)
    metrics = trainer.fit()
    assert trainer.module.net_a.num_classes == 15
    assert "dice/tumor" not in metrics and "dice/liver" in metrics


def test_confident_cps_trains_and_a_bad_threshold_is_refused(cache_dir, tmp_path):
    from slicevos.errors import InputError

    config = tiny_config(cache_dir, tmp_path / "conf", "train.iterations=3", "train.val_every=3",
                         "cps.confidence=0.5", "cps.loss=ce", "data.val_cases=[phantom_0000]")
    trainer = ReferenceTrainer(config)
    assert trainer.cps_loss.confidence == 0.5
    trainer.fit()
    header, *rows = (tmp_path / "conf" / "metrics.csv").read_text().splitlines()
    cps = [float(r.split(",")[header.split(",").index("train/loss_cps")]) for r in rows]
    assert cps and all(np.isfinite(cps))
    with pytest.raises(InputError, match=r"cps\.confidence = 1\.5 is out of range"):
        tiny_config(cache_dir, tmp_path / "bad", "cps.confidence=1.5")
