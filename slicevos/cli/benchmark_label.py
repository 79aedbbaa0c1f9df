"""slicevos-benchmark-label: time the browser labeler on a scan with true labels.

    slicevos-benchmark-label CT.nii.gz TRUTH.nii.gz [--every 10] [--organs 1,3,5,6,10,11]
                             [--screenshot docs/label_page.png] [--json out.json]

Starts ``slicevos-label`` as its own process (as a user would), draws the true outline of
each chosen organ on every ``--every``-th slice and fills it (two requests per connected
piece, as a person with the brush and fill tools), then measures:

- ``propagate_s``: from the Propagate request to the finished overlay (the status says done
  and the shown slice's labels have arrived); ``slice_ms_during_propagation``: how long a
  slice (image + labels PNG) takes while propagation runs (the server stays responsive);
- ``page_load_s``: headless Chromium (``--chromium``) from navigation to the first axial
  slice drawn with its overlay (skipped without Playwright or a browser);
- ``rss_mb`` / ``peak_rss_mb``: the server process's memory after propagation (VmRSS, VmHWM);
- ``save_s``: the Save request (server-side seconds and round trip);
- ``dsc``: per drawn organ, on the propagated (non-key) slices.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from slicevos.cli.common import run_cli
from slicevos.errors import InputError


def outline_requests(mask: np.ndarray, z: int, label: int, min_area: int = 20) -> list[tuple]:
    """(endpoint, body) pairs that draw ``mask`` as a person would: for each connected piece
    a closed radius-0 outline stroke, then a fill inside it."""
    out = []
    count, pieces = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    for piece in range(1, count):
        region = (pieces == piece).astype(np.uint8)
        if region.sum() < min_area:
            continue
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        points = [[int(x), int(y)] for x, y in contours[0][:, 0]]
        out.append(("stroke", {"z": z, "label": label, "tool": "brush", "radius": 0,
                               "points": [*points, points[0]]}))
        inner = cv2.distanceTransform(region, cv2.DIST_L2, 3)
        y, x = np.unravel_index(int(inner.argmax()), inner.shape)
        if inner[y, x] > 1.0:
            out.append(("fill", {"z": z, "label": label, "x": int(x), "y": int(y)}))
    return out


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of process ``pid`` in MB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_rss_mb": round(fields["VmHWM"], 1)}


def slice_ms(client, z: int) -> float:
    started = time.perf_counter()
    for path in (f"/api/image/axial/{z}", f"/api/labels/axial/{z}"):
        client.get(path).raise_for_status()
    return (time.perf_counter() - started) * 1000.0


def page_load(url: str, chromium: str, screenshot: Path | None, z: int) -> float | None:
    """Seconds from navigation to the first slice drawn with its overlay; None without a
    browser. With ``screenshot`` the page at slice ``z`` is written there."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).is_file():
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1560, "height": 980}, bypass_csp=True)
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_function("() => { const l = window.labeler; return l && l.state.ready"
                                   " && l.views.axial.image && l.views.axial.labels; }",
                                   timeout=120_000)
            seconds = time.perf_counter() - started
            if screenshot is not None:
                page.evaluate(f"window.labeler.goTo({z})")
                page.wait_for_function(
                    f"() => {{ const v = window.labeler.views; return ['axial', 'coronal', "
                    f"'sagittal'].every((n) => v[n].labelKey && !v[n].busy) && "
                    f"v.axial.labelKey.startsWith('{z}/'); }}", timeout=120_000)
                page.wait_for_timeout(500)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
            return seconds
        finally:
            browser.close()


def dice_per_organ(result: np.ndarray, truth: np.ndarray, organs: Sequence[int],
                   keys: Sequence[int]) -> dict[str, float]:
    others = np.setdiff1d(np.arange(truth.shape[0]), keys)
    out = {}
    for organ in organs:
        a, b = result[others] == organ, truth[others] == organ
        total = int(a.sum() + b.sum())
        out[str(organ)] = round(2.0 * float((a & b).sum()) / total, 4) if total else 1.0
    return out


def _body(args: argparse.Namespace) -> int:
    from slicevos.io.loader import load_volume
    from slicevos.io.nifti import load_labels
    from slicevos.labeler.launch import LabelServer

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    organs = [int(v) for v in args.organs.split(",") if v]
    volume = load_volume(args.ct)
    truth, _ = load_labels(args.truth, reference=volume)
    depth = truth.shape[0]
    keys = [z for z in range(args.every // 2, depth, args.every)
            if np.isin(truth[z], organs).any()]
    if not keys:
        raise InputError(args.truth, f"none of the organs {organs} is on any key slice",
                         "choose --organs present in the labels")
    work = Path(tempfile.mkdtemp(prefix="slicevos_bench_label_"))
    result: dict = {"scan": str(args.ct), "shape_dhw": list(truth.shape), "keys": keys,
                    "organs": organs}
    started = time.perf_counter()
    server = LabelServer([str(args.ct), "--out", str(work / "labels.nii.gz")])
    result["server_start_s"] = round(time.perf_counter() - started, 2)
    try:
        client = server.client
        requests = [r for z in keys for organ in organs
                    for r in outline_requests(truth[z] == organ, z, organ)]
        started = time.perf_counter()
        for endpoint, body in requests:
            client.post(f"/api/{endpoint}", json=body).raise_for_status()
        result["draw_requests"] = len(requests)
        result["draw_ms_per_request"] = round(
            (time.perf_counter() - started) * 1000.0 / len(requests), 1)
        result["idle_slice_ms"] = round(statistics.median(
            slice_ms(client, z) for z in range(0, depth, max(1, depth // 10))), 1)

        others = np.setdiff1d(np.arange(depth), keys)
        present = [len(set(np.unique(truth[z]).tolist()) & set(organs)) for z in others]
        shown = int(others[int(np.argmax(present))])  # the slice shown: most organs
        started = time.perf_counter()
        client.post("/api/propagate", json={}).raise_for_status()
        during = []
        while (status := client.get("/api/status").json())["running"]:
            during.append(slice_ms(client, int(np.random.default_rng(len(during)).integers(
                depth))))
            time.sleep(0.2)
        client.get(f"/api/labels/axial/{shown}").raise_for_status()
        result["propagate_s"] = round(time.perf_counter() - started, 2)
        result["propagate_server_s"] = status["progress"]["seconds"]
        result["propagated_slices"] = status["progress"]["done"]
        if status["error"]:
            raise RuntimeError(status["error"])
        result["slice_ms_during_propagation"] = (round(statistics.median(during), 1)
                                                 if during else None)
        result["slice_ms_during_propagation_max"] = round(max(during), 1) if during else None
        result.update(proc_memory_mb(server.proc.pid))

        result["page_load_s"] = page_load(server.url, args.chromium, args.screenshot, shown)
        if result["page_load_s"] is not None:
            result["page_load_s"] = round(result["page_load_s"], 2)

        started = time.perf_counter()
        saved = client.post("/api/save", json={}).json()
        result["save_s"] = round(time.perf_counter() - started, 2)
        result["save_server_s"] = saved["seconds"]
        labels, _ = load_labels(saved["path"], reference=volume)
        result["dsc"] = dice_per_organ(labels, truth, organs, keys)
    finally:
        server.finish(signal.SIGINT)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicevos-benchmark-label",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("ct", help="CT scan (NIfTI or DICOM folder)")
    parser.add_argument("truth", help="true labels on the scan's grid (FLARE ids)")
    parser.add_argument("--every", type=int, default=10, help="draw every N-th slice")
    parser.add_argument("--organs", default="1,3,5,6,10,11",
                        help="comma-separated label ids to draw (default liver, spleen, "
                        "aorta, IVC, esophagus, stomach)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser for the "
                        "page-load time")
    parser.add_argument("--screenshot", type=Path, help="write a screenshot of the page here")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
