"""slicevos-label as a real server process: a SIGKILL loses no drawn slice and a restart
resumes (and can discard), Ctrl-C saves the state; bad input gets one-line errors."""

from __future__ import annotations

import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slicevos.cli.label import main
from slicevos.errors import InputError
from slicevos.io.checkpoint import make_payload, save_checkpoint
from slicevos.io.labels import FLARE22
from slicevos.labeler.launch import LabelServer
from slicevos.labeler.render import decode_label_png
from slicevos.labeler.server import TOKEN_HEADER, create_error_app
from slicevos.labeler.state import open_labeler

from .helpers import SHAPE, WAIT_S, row_runs


def test_sigkill_then_restart_resumes_every_key(scans, tmp_path):
    scan, out = scans["lps"], tmp_path / "labels.nii.gz"
    server = LabelServer([str(scan.ct), "--out", str(out)], WAIT_S)
    drawn = {}
    try:
        for z in (3, 9, 15, 21):
            for points in row_runs(scan.labels[z] == 5)[:3]:
                server.client.post("/api/stroke", json={"z": z, "label": 5, "tool": "brush",
                                                        "radius": 1, "points": points}
                                   ).raise_for_status()
            drawn[z] = decode_label_png(server.client.get(f"/api/labels/axial/{z}").content,
                                        SHAPE[1:])
    finally:
        server.finish(signal.SIGKILL, WAIT_S)
    assert server.proc.returncode == -signal.SIGKILL

    again = LabelServer([str(scan.ct), "--out", str(out)], WAIT_S)
    try:
        status = again.client.get("/api/status").json()
        assert status["keys"] == sorted(drawn) and status["resumed"] == len(drawn)
        assert again.client.get("/api/info").json()["resumed"] == len(drawn)
        for z, labels in drawn.items():
            assert labels is not None and labels.any()
            served = again.client.get(f"/api/labels/axial/{z}").content
            np.testing.assert_array_equal(decode_label_png(served, SHAPE[1:]), labels)
        assert again.client.post("/api/discard", json={}).json()["keys"] == []
        again.client.post("/api/stroke", json={"z": 5, "label": 1, "tool": "brush",
                                               "radius": 2, "points": [[30, 30]]}
                          ).raise_for_status()
    finally:
        printed = again.finish(signal.SIGINT, WAIT_S)  # Ctrl-C
    assert again.proc.returncode == 0, printed
    assert "session state saved" in printed and "Traceback" not in printed
    assert "resumed 4 key slice(s)" in printed
    state = (tmp_path / "labels.label-session" / "state.json").read_text()
    assert '"closed"' in state
    assert sorted(p.name for p in (tmp_path / "labels.label-session").glob("*.png")) == [
        "organ_001_00005.png"]  # a stroke keys its organ only
    assert not out.exists()  # nothing saved without Save


@pytest.fixture
def bad_files(scans, tmp_path) -> dict[str, Path]:
    scan = scans["lps"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(scan.ct.read_bytes()[:400])
    img = nib.load(scan.truth)
    other_grid = tmp_path / "other_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 24), np.uint8), img.affine), other_grid)
    outside = tmp_path / "outside_schema.nii.gz"
    data = np.zeros(img.shape, np.uint8)
    data[10:20, 10:20, 5] = 14  # tumor id: not in flare22
    nib.save(nib.Nifti1Image(data, img.affine, img.header), outside)
    checkpoint = save_checkpoint(tmp_path / "reference_kind.pt",
                                 make_payload("reference_cps", {}, {}, 0))
    return {"broken": broken, "other_grid": other_grid, "outside": outside,
            "checkpoint": checkpoint}


@pytest.mark.parametrize("case, needle", [
    ("broken", "broken.nii.gz"),
    ("other_grid", "label shape"),
    ("outside", "not in schema flare22"),
    ("checkpoint", "reference_kind.pt"),
    ("flow_checkpoint", "takes no checkpoint"),
    ("out_is_input", "never overwritten"),
])
def test_bad_input_gets_one_line_errors(scans, bad_files, tmp_path, capsys, case, needle):
    scan = str(scans["lps"].ct)
    args = {
        "broken": [str(bad_files["broken"])],
        "other_grid": [scan, "--labels", str(bad_files["other_grid"])],
        "outside": [scan, "--labels", str(bad_files["outside"])],
        "checkpoint": [scan, "--propagation", str(bad_files["checkpoint"])],
        "flow_checkpoint": [scan, "--propagator", "flow", "--propagation",
                            str(bad_files["checkpoint"])],
        "out_is_input": [scan, "--out", scan],
    }[case]
    code = main([*args, "--out", str(tmp_path / "o.nii.gz"), "--port", "0"]
                if case != "out_is_input" else [*args, "--port", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Fix:" in err
    assert needle in err


def test_errors_show_on_the_page_too(scans, bad_files, tmp_path):
    from starlette.testclient import TestClient

    with pytest.raises(InputError) as caught:
        open_labeler(scans["lps"].ct, tmp_path / "o.nii.gz", FLARE22,
                     start_labels=bad_files["outside"])
    client = TestClient(create_error_app(str(caught.value), "t"), headers={TOKEN_HEADER: "t"})
    answer = client.get("/api/info")
    assert answer.status_code == 400 and answer.json()["error"] == str(caught.value)
    assert client.get("/", params={"token": "t"}).status_code == 200
