"""Empty keys that can be said: a slice marked "key as shown" with nothing on it is saved in the
label map's key list, and slicevos-infer and slicevos-label given the saved file use exactly
the same keys; --empty-slices says the same on the command line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from slicevos.cli.infer_volume import main as infer
from slicevos.io.loader import load_volume
from slicevos.io.nifti import label_map_path, load_labels

from .helpers import draw_truth, propagate_and_wait

DRAWN, EMPTY = (6, 12), 22


def _run_infer(ct, keys, out, *extra) -> dict:
    assert infer([str(ct), str(out), "--keys", str(keys), "--schema", "flare22", "--quiet",
                  "--report", "--overwrite", *extra]) == 0
    return json.loads(out.with_name(out.name.replace(".nii.gz", "_report.json")).read_text())


def test_empty_key_round_trips_label_save_cli(scans, open_client, tmp_path):
    scan = scans["lps"]
    saved = tmp_path / "saved" / "labels.nii.gz"
    labeler, client = open_client(scan.ct, saved)
    for z in DRAWN:
        draw_truth(client, scan.labels, z)
    status = client.post("/api/accept", json={"z": EMPTY}).json()  # nothing shown there yet
    assert status["keys"] == [*DRAWN, EMPTY] and not labeler.session.key_masks[EMPTY].any()
    propagate_and_wait(client)
    assert not labeler.session.labels[EMPTY].any()  # the empty key ends the organs there
    assert client.post("/api/save", json={}).status_code == 200
    listed = json.loads(label_map_path(saved).read_text())["key_slices"]
    assert listed == [*DRAWN, EMPTY]  # LPS: file slice index = canonical index

    # the CLI given the saved (fully propagated) file takes exactly those keys
    report = _run_infer(scan.ct, saved, tmp_path / "cli.nii.gz")
    assert report["key_slices"] == [*DRAWN, EMPTY]
    cli_labels, _ = load_labels(tmp_path / "cli.nii.gz", reference=load_volume(scan.ct))
    np.testing.assert_array_equal(cli_labels[[*DRAWN, EMPTY]],
                                  labeler.session.labels[[*DRAWN, EMPTY]])
    assert json.loads(label_map_path(tmp_path / "cli.nii.gz").read_text())["key_slices"] \
        == [*DRAWN, EMPTY]  # and writes them on, for the next round trip

    # slicevos-label reopened on the saved file starts from the same keys
    again, _ = open_client(scan.ct, tmp_path / "again" / "labels.nii.gz", start_labels=saved)
    assert again.keys == (*DRAWN, EMPTY)
    # accepting a drawn slice makes it a whole-slice key (one undo step); accepting it again
    # as shown changes nothing (no undo step)
    before = client.post("/api/accept", json={"z": DRAWN[0]}).json()
    assert before["whole_keys"] == [DRAWN[0], EMPTY]
    assert client.post("/api/accept", json={"z": DRAWN[0]}).json()["undo"] == before["undo"]


def test_empty_slices_option_adds_empty_keys_and_refuses_drawn_ones(scans, tmp_path, capsys):
    scan = scans["lps"]
    truth = nib.load(scan.truth)
    drawn = np.zeros(truth.shape, np.uint8)
    drawn[..., list(DRAWN)] = np.asarray(truth.dataobj)[..., list(DRAWN)]
    keys = tmp_path / "drawn.nii.gz"
    nib.save(nib.Nifti1Image(drawn, truth.affine), keys)
    out = tmp_path / "seg.nii.gz"
    assert _run_infer(scan.ct, keys, out)["key_slices"] == list(DRAWN)
    assert _run_infer(scan.ct, keys, out, "--empty-slices", str(EMPTY))["key_slices"] == \
        [*DRAWN, EMPTY]
    labels, _ = load_labels(out, reference=load_volume(scan.ct))
    assert not labels[EMPTY].any()
    capsys.readouterr()
    assert infer([str(scan.ct), str(out), "--keys", str(keys), "--schema", "flare22",
                  "--empty-slices", str(DRAWN[0]), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drawn.nii.gz" in err[0] and "marked empty" in err[0]
    assert infer([str(scan.ct), str(out), "--empty-slices", "3"]) == 2
    assert "--keys" in capsys.readouterr().err


@pytest.mark.parametrize("listed, needle", [('"key_slices": [99]', "outside"),
                                            ('"key_slices": "6,12"', "list of slice")])
def test_bad_key_lists_get_one_line_errors(scans, tmp_path, capsys, listed, needle):
    scan = scans["lps"]
    keys = tmp_path / "keys.nii.gz"
    keys.write_bytes(scan.truth.read_bytes())
    label_map_path(keys).write_text("{" + listed + "}")
    assert infer([str(scan.ct), str(tmp_path / "o.nii.gz"), "--keys", str(keys), "--schema",
                  "flare22", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keys.json" in err[0] and needle in err[0]
