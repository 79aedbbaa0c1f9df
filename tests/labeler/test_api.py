"""The labeler's API through the framework's test client: draw, propagate, correct, undo,
save in the input's own geometry, and refusals of bad requests."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from slicevos.io.loader import load_volume
from slicevos.io.nifti import label_map_path, load_labels
from slicevos.labeler.render import decode_label_png

from .helpers import SHAPE, TOKEN, draw_truth, propagate_and_wait


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 2.0 * (a & b).sum() / total if total else 1.0


@pytest.mark.parametrize("layout", ["lps", "ras"])
def test_draw_propagate_save_in_input_geometry(scans, open_client, tmp_path, layout):
    scan = scans[layout]
    before = scan.ct.read_bytes()
    out = tmp_path / "saved" / "labels.nii.gz"
    labeler, client = open_client(scan.ct, out)
    for z in (6, 12, 17):
        draw_truth(client, scan.labels, z)
    status = propagate_and_wait(client)
    assert status["keys"] == [6, 12, 17] and set(status["up_to_date"]) == {"1"}
    # each organ drawn is a key for that organ only: one pass per organ over its non-keys
    assert status["progress"]["done"] == status["progress"]["total"] >= SHAPE[0] - 3
    assert status["whole_keys"] == [] and status["organ_keys"]["1"] == [6, 12, 17]
    # uncertainty: a number on every slice, and the check-next list avoids keys
    assert None not in status["uncertainty"]
    assert not set(status["check_next"]) & {6, 17}
    saved = client.post("/api/save", json={}).json()
    assert saved["path"] == str(out.resolve()) and saved["pending_slices"] == 0

    written, source = nib.load(out), nib.load(scan.ct)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
    labels, _ = load_labels(out, reference=load_volume(scan.ct))
    np.testing.assert_array_equal(labels[[6, 17]], np.where(
        np.isin(scan.labels[[6, 17]], (1, 5, 6, 13)), scan.labels[[6, 17]], 0))
    np.testing.assert_array_equal(labels, labeler.session.labels)
    between = np.r_[7:12, 13:17]
    liver = dice(labels[between] == 1, scan.labels[between] == 1)
    assert liver > 0.6, f"propagated liver DSC {liver:.3f}"
    assert json.loads(label_map_path(out).read_text())["labels"]["1"] == "liver"
    assert scan.ct.read_bytes() == before  # the input is never touched


def test_correction_repropagates_its_segments_and_the_ends_that_read_it(scans, open_client):
    scan = scans["lps"]
    labeler, client = open_client(scan.ct)
    for z in (7, 12, 17):  # the liver: 82, 358 and 269 px
        draw_truth(client, scan.labels, z)
        client.post("/api/accept", json={"z": z}).raise_for_status()  # whole-slice keys
    propagate_and_wait(client)
    labels_before = labeler.session.labels.copy()
    revisions_before = np.array(client.get("/api/status").json()["revisions"])

    # correct organ 1 on slice 9 (inside the 7..12 segment): 9 becomes a key of organ 1
    ys, xs = np.nonzero(scan.labels[9] == 1)
    client.post("/api/stroke", json={"z": 9, "label": 1, "tool": "brush", "radius": 1,
                                     "points": [[int(xs[0]), int(ys[0])]]}).raise_for_status()
    status = propagate_and_wait(client)
    assert status["keys"] == [7, 9, 12, 17] and status["organ_keys"] == {"1": [9]}
    changed = np.flatnonzero(np.array(status["revisions"]) != revisions_before).tolist()
    # the segments 7..9 and 9..12, and below 7: 9 is the next key inward there, which the
    # liver's end model pools (7 holds 82 of the 256 pixels it needs) and its second opinion
    # walks from. Above 17 its model reads 17 alone (269 px), and the second opinion the next
    # key inward, 12: 9 is neither, so nothing above 12 changes.
    assert changed == [*range(7), 8, 9, 10, 11]
    untouched = np.r_[12:SHAPE[0]]
    np.testing.assert_array_equal(labeler.session.labels[untouched], labels_before[untouched])
    # the other organs on slice 9 stay propagated: only organ 1 was redrawn there
    others = ~np.isin(labels_before[9], [0, 1]) & (labeler.session.labels[9] != 1)
    np.testing.assert_array_equal(labeler.session.labels[9][others], labels_before[9][others])


def test_flows_are_computed_ahead_while_the_user_draws(scans, open_client):
    """After a propagation the page computes the flows a next key may need (both ways), so
    a correction between two keys computes none; the labels are those of a session that
    computed them on the way."""
    scan = scans["lps"]
    labeler, client = open_client(scan.ct)
    for z in (4, 20):
        draw_truth(client, scan.labels, z)
    propagate_and_wait(client)
    labeler.wait_work_ahead()
    flows = labeler.session.engine.flows
    assert flows.computed == len(flows._kept) == 2 * (SHAPE[0] - 1)
    draw_truth(client, scan.labels, 12, organs=(1,))
    propagate_and_wait(client)
    assert flows.computed == 2 * (SHAPE[0] - 1)  # every flow came from the cache
    session = labeler.propagator.start(labeler.image)
    for z in (4, 12, 20):
        session.set_keys_of_slice(z, *labeler.session.keys_of_slice(z))
    cold = session.run()
    assert (cold != labeler.session.labels).mean() < 1e-3  # fixed-point flows: a pixel or so


def test_undo_restores_or_drops_the_key(scans, open_client):
    scan = scans["lps"]
    labeler, client = open_client(scan.ct)
    stroke = {"z": 10, "label": 1, "tool": "brush", "radius": 3, "points": [[20, 30], [26, 30]]}
    client.post("/api/stroke", json=stroke).raise_for_status()
    first = labeler.session.organ_keys[1][10].copy()
    assert labeler.sidecar.load_organ_keys()[1][10].sum() == first.sum()  # autosaved
    erase = {**stroke, "tool": "eraser", "radius": 1, "points": [[23, 30]]}
    status = client.post("/api/stroke", json=erase).json()
    assert status["undo"] == 2 and labeler.session.organ_keys[1][10].sum() < first.sum()
    client.post("/api/undo", json={}).raise_for_status()
    np.testing.assert_array_equal(labeler.session.organ_keys[1][10], first)
    status = client.post("/api/undo", json={}).json()
    assert status["keys"] == [] and not labeler.sidecar.load_organ_keys()
    assert client.post("/api/undo", json={}).status_code == 400


def test_fill_paints_the_clicked_region(scans, open_client):
    labeler, client = open_client(scans["lps"].ct)
    ring = [[20, 20], [40, 20], [40, 40], [20, 40], [20, 20]]
    client.post("/api/stroke", json={"z": 3, "label": 5, "tool": "brush", "radius": 0,
                                     "points": ring}).raise_for_status()
    client.post("/api/fill", json={"z": 3, "label": 5, "x": 30, "y": 30}).raise_for_status()
    mask = labeler.session.organ_keys[5][3] * 5
    assert mask[30, 30] == 5 and mask[21:40, 21:40].min() == 5 and mask[10, 10] == 0


def test_slices_come_as_png_of_one_plane(scans, open_client):
    labeler, client = open_client(scans["lps"].ct)
    draw_truth(client, scans["lps"].labels, 9)
    for view, index, shape in (("axial", 9, SHAPE[1:]), ("coronal", 30, (SHAPE[0], SHAPE[2])),
                               ("sagittal", 30, SHAPE[:2])):
        image = client.get(f"/api/image/{view}/{index}", params={"window": "bone"})
        assert image.headers["content-type"] == "image/png"
        labels = decode_label_png(client.get(f"/api/labels/{view}/{index}").content, shape)
        assert labels is not None
    axial = decode_label_png(client.get("/api/labels/axial/9").content, SHAPE[1:])
    np.testing.assert_array_equal(axial, labeler.session.labels[9])


def test_every_request_needs_the_token(scans, open_client):
    from starlette.testclient import TestClient

    labeler, client = open_client(scans["lps"].ct)
    bare = TestClient(client.app)
    for path in ("/api/info", "/api/status", "/api/labels/axial/0", "/api/image/axial/0"):
        assert bare.get(path).status_code == 403
        assert bare.get(path, headers={"X-Slicevos-Token": "wrong"}).status_code == 403
        assert bare.get(path, params={"token": TOKEN}).status_code == 403  # API: header only
    assert bare.post("/api/save", json={}).status_code == 403
    assert not labeler.output.exists()
    assert bare.get("/").status_code == 403
    assert bare.get("/static/app.js").status_code == 403
    page = bare.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert bare.get("/static/app.js", params={"token": TOKEN}).status_code == 200


@pytest.mark.parametrize("path", ["/static/../server.py", "/static/..%2fserver.py",
                                  "/static/%2e%2e/state.py", "/static/page/../../state.py",
                                  "/static//etc/passwd", "/static/index.html"])
def test_static_files_cannot_escape(scans, open_client, path):
    _, client = open_client(scans["lps"].ct)
    response = client.get(path, params={"token": TOKEN})
    assert response.status_code == 404 and "def " not in response.text


def test_browser_cannot_choose_paths(scans, open_client, tmp_path):
    labeler, client = open_client(scans["lps"].ct)
    target = tmp_path / "elsewhere.nii.gz"
    response = client.post("/api/save", json={"path": str(target)})
    assert response.status_code == 400 and "takes no fields" in response.json()["error"]
    assert not target.exists() and not labeler.output.exists()
    response = client.get("/api/image/axial/..%2F..%2Fetc%2Fpasswd")
    assert response.status_code in (400, 404)


STROKE = {"z": 2, "label": 1, "tool": "brush", "radius": 2, "points": [[5, 5]]}


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({**STROKE, "extra": 1}).encode(), "unknown ['extra']"),
    (json.dumps({"z": 2}).encode(), "missing"),
    (json.dumps({**STROKE, "z": 999}).encode(), "z must be an integer"),
    (json.dumps({**STROKE, "z": 2.5}).encode(), "z must be an integer"),
    (json.dumps({**STROKE, "z": True}).encode(), "z must be an integer"),
    (json.dumps({**STROKE, "label": 14}).encode(), "not in schema flare22"),
    (json.dumps({**STROKE, "tool": "knife"}).encode(), "unknown tool"),
    (json.dumps({**STROKE, "radius": 10 ** 6}).encode(), "radius must be"),
    (json.dumps({**STROKE, "points": "5,5"}).encode(), "points must be a list"),
    (json.dumps({**STROKE, "points": []}).encode(), "points must be a list"),
    (json.dumps({**STROKE, "points": [[5]]}).encode(), "stroke point 0"),
    (json.dumps({**STROKE, "points": [[5, 1e9]]}).encode(), "stroke point 0"),
    (b'{"z": 2, "label": 1, "tool": "brush", "radius": 2, "points": [[NaN, 1]]}', "stroke point"),
])
def test_malformed_strokes_get_400_with_a_message(scans, open_client, body, needle):
    labeler, client = open_client(scans["lps"].ct)
    response = client.post("/api/stroke", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"] and "Fix:" in response.json()["error"]
    assert labeler.session.key_slices == []
    assert client.post("/api/stroke", json=STROKE).status_code == 200  # still serving


def test_bad_indices_and_oversized_bodies_are_refused(scans, open_client):
    _, client = open_client(scans["lps"].ct)
    for path in ("/api/labels/axial/24", "/api/labels/axial/-1", "/api/labels/axial/1e3",
                 "/api/image/oblique/3", "/api/image/axial/3?window=lung",
                 "/api/labels/sagittal/64"):
        response = client.get(path)
        assert response.status_code == 400 and "Fix:" in response.json()["error"], path
    huge = {**STROKE, "points": [[5, 5]] * 500_000}
    response = client.post("/api/stroke", json=huge)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    response = client.post("/api/fill", json={"z": 2, "label": 1, "x": 64, "y": 0})
    assert response.status_code == 400
    assert client.post("/api/propagate", json={}).status_code == 400  # no key slice yet
