"""Pseudo-label generation: kill safety, resume, sharding (torchrun), members and TTA flips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slicevos.cli.generate_pseudo_labels import main as generate_main
from slicevos.data.cache_build import TEST_EXIT_AFTER_ENV
from slicevos.errors import InputError
from slicevos.inference.reference.ensemble import ReferenceMember, predict_members
from slicevos.inference.reference.segmenter import ReferenceSegmenter
from slicevos.io.labels import FLARE22
from slicevos.io.loader import load_volume
from slicevos.io.volume import Volume
from slicevos.preprocessing.position import relative_position
from slicevos.preprocessing.windowing import window_volume
from slicevos.pseudo.folder import load_members, read_case_record
from slicevos.pseudo.generation import PseudoCase, cases_from_inputs, shard

from .tiny_setup import TINY_PHANTOM, single_thread, tiny_checkpoints, tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
UNLABELED = ["phantom_u0000", "phantom_u0001", "phantom_u0002"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("gen")
    dataset = tiny_dataset(root / "ds")
    return dataset, tiny_checkpoints(dataset, root / "work")


def _args(dataset: Path, checkpoints: list[Path], out: Path, *extra: str) -> list[str]:
    return [str(dataset), "--checkpoints", *map(str, checkpoints), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def _torchrun() -> str | None:
    beside = Path(sys.executable).with_name("torchrun")
    return str(beside) if beside.is_file() else shutil.which("torchrun")


def _outputs(folder: Path, case_id: str) -> dict[str, object]:
    record = read_case_record(folder / case_id)
    img = nib.load(folder / case_id / "pseudo_label.nii.gz")
    names = json.loads((folder / case_id / "case.json").read_text())["members"]
    return {"members": load_members(record), "names": names, "fused": np.asarray(img.dataobj),
            "affine": img.affine, "consensus": record.consensus}


@pytest.mark.slow
def test_killed_generation_rerun_matches_uninterrupted_sharded_run(setup, tmp_path):
    dataset, checkpoints = setup
    cut, full = tmp_path / "cut", tmp_path / "full"
    env = {**os.environ, TEST_EXIT_AFTER_ENV: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "slicevos.cli.generate_pseudo_labels",
                           *_args(dataset, checkpoints, cut, "--tta", "flip_lr")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 75, proc.stderr[-2000:]
    # killed while writing the 2nd case: one finished case, one half-written temp folder
    assert sorted(p.name for p in cut.iterdir() if not p.name.startswith(".")) == UNLABELED[:1]
    (half,) = [p for p in cut.iterdir() if p.name.startswith(".")]
    assert half.name.startswith(".phantom_u0001.tmp-") and (half / "members.npz").is_file()
    assert not (half / "case.json").exists()
    # a case folder without case.json (e.g. copied by hand) is stale too
    (cut / "phantom_u0002").mkdir()
    (cut / "phantom_u0002" / "members.npz").write_bytes(b"garbage")
    first_record = (cut / "phantom_u0000" / "case.json").stat().st_mtime_ns

    with single_thread():  # as the subprocesses (OMP_NUM_THREADS=1): bit-identical sums
        assert generate_main(_args(dataset, checkpoints, cut, "--tta", "flip_lr")) == 0
    assert sorted(p.name for p in cut.iterdir()) == UNLABELED  # temp folder removed
    assert (cut / "phantom_u0000" / "case.json").stat().st_mtime_ns == first_record  # skipped

    torchrun = _torchrun()
    if torchrun is not None:  # the uninterrupted run, sharded over 2 ranks
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2",
                               str(ROOT / "tools" / "generate_pseudo_labels.py"),
                               *_args(dataset, checkpoints, full, "--tta", "flip_lr")],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "rank 1/2: 1 written" in proc.stdout and "rank 0/2: 2 written" in proc.stdout
    else:
        for rank in (0, 1):
            with single_thread():
                assert generate_main(_args(dataset, checkpoints, full, "--tta", "flip_lr", "--rank",
                                           str(rank), "--world-size", "2")) == 0
    for case_id in UNLABELED:
        got, want = _outputs(cut, case_id), _outputs(full, case_id)
        assert got["names"] == want["names"] == ["ckpt0", "ckpt0+flip_lr", "ckpt1", "ckpt1+flip_lr"]
        assert got["members"].shape == (4, 12, 48, 48) and got["members"].dtype == np.uint8
        np.testing.assert_array_equal(got["members"], want["members"])
        np.testing.assert_array_equal(got["fused"], want["fused"])
        np.testing.assert_array_equal(got["affine"], want["affine"])
        assert got["consensus"] == want["consensus"]


def test_rerun_with_other_members_redoes_cases(setup, tmp_path):
    dataset, checkpoints = setup
    out = tmp_path / "p"
    assert generate_main(_args(dataset, checkpoints, out, "--tta", "flip_ud")) == 0
    assert generate_main(_args(dataset, checkpoints, out, "--tta")) == 0  # no TTA
    for case_id in UNLABELED:
        record = read_case_record(out / case_id)
        assert load_members(record).shape[0] == 2
        assert json.loads((out / case_id / "case.json").read_text())["members"] == ["ckpt0", "ckpt1"]
        volume = load_volume(record.image)
        # the fused label is written in the source image's geometry
        assert nib.load(out / case_id / "pseudo_label.nii.gz").shape == volume.geometry.shape


def test_single_member_is_refused(setup, tmp_path, capsys):
    dataset, checkpoints = setup
    assert generate_main(_args(dataset, checkpoints[:1], tmp_path / "p", "--tta")) == 2
    assert "at least 2" in capsys.readouterr().err


def test_default_members_add_two_position_readings(setup, tmp_path):
    """By default each checkpoint's pair also runs under the two shifted slice positions."""
    dataset, checkpoints = setup
    out = tmp_path / "p"
    assert generate_main(_args(dataset, checkpoints[:1], out)) == 0
    members = json.loads((out / UNLABELED[0] / "case.json").read_text())["members"]
    assert members == ["ckpt0", "ckpt0+pos_shift_up", "ckpt0+pos_shift_down"]


def test_flip_member_mirrors_the_volume_and_swaps_lateral_classes(setup):
    dataset, checkpoints = setup
    segmenter = ReferenceSegmenter.from_checkpoint(checkpoints[0])
    plain, flipped = ReferenceMember(segmenter, "a"), ReferenceMember(segmenter, "b", "flip_lr")
    volume = load_volume(dataset / "unlabeled" / "phantom_u0000_0000.nii.gz")
    mirrored = Volume(np.ascontiguousarray(volume.hu[..., ::-1]), volume.geometry)
    lut = np.arange(256, dtype=np.uint8)  # right <-> left kidney and adrenal gland
    for right, left in (("right_kidney", "left_kidney"), ("right_adrenal_gland", "left_adrenal_gland")):
        lut[FLARE22.id_of(right)], lut[FLARE22.id_of(left)] = FLARE22.id_of(left), FLARE22.id_of(right)
    expected = lut[plain.predict(mirrored)[..., ::-1]]
    np.testing.assert_array_equal(flipped.predict(volume), expected)
    both = predict_members(volume, [plain, flipped])
    assert both.shape == (2, *volume.shape) and both.dtype == np.uint8
    ud = ReferenceMember(segmenter, "c", "flip_ud")
    np.testing.assert_array_equal(ud.predict(volume),
                                  plain.predict(Volume(volume.hu[:, ::-1].copy(), volume.geometry))[:, ::-1])


def test_shards_are_disjoint_and_cover():
    cases = [PseudoCase(f"c{i}", Path(f"/x/c{i}.nii.gz")) for i in (3, 0, 4, 1, 2)]
    parts = [shard(cases, r, 3) for r in range(3)]
    assert [c.case_id for c in parts[0]] == ["c0", "c3"]
    assert sorted(c.case_id for p in parts for c in p) == [f"c{i}" for i in range(5)]
    with pytest.raises(InputError, match="rank 3"):
        shard(cases, 3, 3)


def test_cases_from_inputs(setup, tmp_path):
    dataset, _ = setup
    assert [c.case_id for c in cases_from_inputs([dataset], FLARE22)] == UNLABELED
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("b_0000.nii.gz", "a.nii"):
        shutil.copy(dataset / "unlabeled" / "phantom_u0000_0000.nii.gz", folder / name)
    assert [c.case_id for c in cases_from_inputs([folder], FLARE22)] == ["a", "b"]
    single = cases_from_inputs([folder / "a.nii"], FLARE22)
    assert single == [PseudoCase("a", folder / "a.nii")]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "a.nii", other / "a.nii")
    with pytest.raises(InputError, match="unique"):
        cases_from_inputs([folder, other], FLARE22)
    with pytest.raises(InputError, match="not found"):
        cases_from_inputs([tmp_path / "absent.nii.gz"], FLARE22)


def test_benchmark_scores_consensus_against_phantom_truth(setup, tmp_path, capsys):
    from slicevos.cli.benchmark_pseudo import main as benchmark_main
    from slicevos.cli.benchmark_pseudo import spearman
    from slicevos.metrics.overlap import dice_per_class
    from slicevos.phantom import make_phantom
    from slicevos.pseudo.consensus import consensus_score, fuse_members

    dataset, checkpoints = setup
    out = tmp_path / "p"
    assert generate_main(_args(dataset, checkpoints, out, "--tta", "flip_lr")) == 0
    table = tmp_path / "bench.csv"
    assert benchmark_main([str(out), "--phantoms", str(dataset), "--member-set",
                           "plain=ckpt0,ckpt1", "--member-set", "flips=ckpt0+flip_lr,ckpt1+flip_lr",
                           "--csv", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "member set plain" in printed and "member set flips" in printed
    assert "Kendall" in printed and "top 0.5 *" in printed  # the default rule is marked
    assert "organ cutoff" in printed and "DSC drop" in printed
    lines = [r.split(",") for r in table.read_text().splitlines()]
    assert lines[0] == ["member_set", "case_id", "condition", "consensus", "true_dice"]
    rows = {r[1]: r[3:] for r in lines[1:] if r[0] == "plain"}
    assert sorted(rows) == UNLABELED and len(lines) == 1 + 2 * len(UNLABELED)
    info = json.loads((dataset / "dataset.json").read_text())
    seed = next(c["seed"] for c in info["unlabeled"] if c["case"] == "phantom_u0001")
    members = load_members(read_case_record(out / "phantom_u0001"))[[0, 2]]  # ckpt0, ckpt1
    truth = make_phantom(seed, TINY_PHANTOM).labels
    fused = fuse_members(members, FLARE22.num_classes)
    classes = sorted((set(np.unique(truth)) | set(np.unique(fused))) - {0})
    consensus, true_dice = (float(v) for v in rows["phantom_u0001"])
    assert consensus == pytest.approx(consensus_score(members, FLARE22.ids).volume, abs=1e-6)
    assert true_dice == pytest.approx(np.mean(list(dice_per_class(truth, fused, classes).values())),
                                      abs=1e-6)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(0.8)
    assert benchmark_main([str(out), "--phantoms", str(dataset), "--member-set", "x=ckpt0"]) == 2


def test_benchmark_scores_two_pools_as_one_set(setup, tmp_path, capsys):
    """Two spread pools (distinct prefixes) generated and scored together: every case of both
    gets a row and its condition; configs and pools must pair up."""
    import yaml

    from slicevos.cli.benchmark_pseudo import main as benchmark_main

    _, checkpoints = setup
    args, pools = [], {}
    for prefix, seed in (("a_", 1), ("b_", 2)):
        config = tmp_path / f"{prefix}pool.yaml"
        config.write_text(yaml.safe_dump({
            "base": {"shape": [12, 48, 48]}, "seeds_per_condition": 1, "seed": seed,
            "prefix": prefix, "conditions": {"clean": {}, "noisy": {"noise_hu": 120.0}}}))
        pools[prefix] = tmp_path / f"{prefix}pool"
        args += ["--pool", str(pools[prefix]), "--pool-config", str(config)]
    table = tmp_path / "two.csv"
    assert benchmark_main([str(tmp_path / "p"), *args, "--checkpoints", *map(str, checkpoints),
                           "--device", "cpu", "--csv", str(table)]) == 0
    rows = [r.split(",") for r in table.read_text().splitlines()[1:]]
    assert sorted((r[1], r[2]) for r in rows) == [
        ("a_clean_0", "clean"), ("a_noisy_0", "noisy"), ("b_clean_0", "clean"),
        ("b_noisy_0", "noisy")]
    assert "4 volumes" in capsys.readouterr().out
    # --per-pool: each pool scored alone, one table row per (variant, member set) with one
    # Spearman per pool; the CSV gains the pool and every variant's score
    assert benchmark_main([str(tmp_path / "p"), *args, "--per-pool", "--csv", str(table),
                           "--variant", "unanimous_iou_3d", "fused_dice_3d"]) == 0
    printed = capsys.readouterr().out
    table_lines = printed[printed.index("== Spearman of consensus"):].splitlines()
    assert "a_pool (2)" in table_lines[1] and "b_pool (2)" in table_lines[1]
    assert [line.split()[:2] for line in table_lines[2:4]] == [
        ["unanimous_iou_3d", "all"], ["fused_dice_3d", "all"]]
    assert "worst pool per variant" in table_lines[4]
    lines = [r.split(",") for r in table.read_text().splitlines()]
    assert lines[0][5:] == ["pool", "consensus_unanimous_iou_3d", "consensus_fused_dice_3d"]
    assert sorted((r[1], r[5]) for r in lines[1:]) == [
        ("a_clean_0", "a_pool"), ("a_noisy_0", "a_pool"), ("b_clean_0", "b_pool"),
        ("b_noisy_0", "b_pool")]
    assert all(r[3] == r[6] for r in lines[1:])  # the first variant is the report's
    assert benchmark_main([str(tmp_path / "p"), "--pool", str(pools["a_"]), "--pool-config",
                           str(tmp_path / "a_pool.yaml"), "--pool-config",
                           str(tmp_path / "b_pool.yaml")]) == 2
    assert "2 pool config(s) for 1 --pool folder(s)" in capsys.readouterr().err


def test_members_of_one_network_of_the_pair(setup):
    from slicevos.inference.reference.ensemble import reference_members

    _, checkpoints = setup
    members = reference_members(checkpoints[:1], ["flip_lr"], networks=["a", "b"])
    assert [m.name for m in members] == ["ckpt0.a", "ckpt0.a+flip_lr", "ckpt0.b", "ckpt0.b+flip_lr"]
    assert members[0].identity()["network"] == "a" and "network" not in reference_members(
        checkpoints[:1])[0].identity()  # pair members keep their old identity (reruns reuse)
    volume = load_volume(sorted((setup[0] / "unlabeled").iterdir())[0])
    assert members[0].segmenter.model.net is members[1].segmenter.model.net  # shared weights
    with single_thread():
        labels = predict_members(volume, [members[0], members[2]])
        pair = ReferenceSegmenter.from_checkpoint(checkpoints[0]).model
        images = window_volume(volume.hu, members[0].segmenter.info.windows)
        positions = relative_position(np.arange(volume.num_slices), volume.num_slices)
        alone = [ReferenceSegmenter(net).segment(images, positions)
                 for net in (pair.net_a, pair.net_b)]
    assert labels.shape == (2, *volume.shape)
    assert np.array_equal(labels[0], alone[0]) and np.array_equal(labels[1], alone[1])


def test_pipeline_members_fill_the_same_keys_with_each_engine():
    from slicevos.inference.reference.ensemble import pipeline_members
    from slicevos.phantom import PhantomConfig, make_phantom

    demo = ROOT / "checkpoints"
    members = pipeline_members([demo / "demo_reference.pt"], ["stcn", "flow"],
                               demo / "demo_propagation.pt")
    assert [m.name for m in members] == ["ckpt0.stcn", "ckpt0.flow"]
    stcn, flow = (m.identity() for m in members)
    assert stcn["engine"] == "stcn" and stcn["propagation_fingerprint"]["size"] > 0
    assert flow["engine"] == "flow" and "propagation" not in flow
    volume = make_phantom(3, PhantomConfig(shape=(16, 128, 128))).to_volume()  # demo grid
    with single_thread():
        labels = predict_members(volume, members)
        results = [m.pipeline.run(volume) for m in members]
    assert labels.shape == (2, *volume.shape) and labels.any()
    assert results[0].key_slices == results[1].key_slices  # the same reference keys
    assert np.array_equal(labels[0], results[0].labels)
    assert np.array_equal(labels[1], results[1].labels)
