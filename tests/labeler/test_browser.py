"""End to end in a real headless browser (Debian's chromium driven by Playwright): load the
page, draw a stroke on an axial slice, propagate, see the overlay on other slices, save."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from slicevos.io.loader import load_volume
from slicevos.io.nifti import label_map_path, load_labels

from .helpers import TOKEN, WAIT_S

CHROMIUM = Path(os.environ.get("SLICEVOS_CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need Playwright (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn", reason="browser tests need uvicorn")
if not (CHROMIUM.is_file() or shutil.which(str(CHROMIUM))):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set "
                "SLICEVOS_CHROMIUM): browser tests skipped", allow_module_level=True)


@pytest.fixture
def served(scans, open_client, tmp_path):
    """The labeler of the LPS phantom behind a real uvicorn server on a free port."""
    from slicevos.labeler.server import create_app

    labeler, _ = open_client(scans["lps"].ct, tmp_path / "out" / "labels.nii.gz")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(labeler, TOKEN), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield labeler, f"http://127.0.0.1:{sock.getsockname()[1]}/?token={TOKEN}"
    server.should_exit = True
    thread.join(timeout=WAIT_S)


def overlay_pixels(page) -> int:
    """Pixels of the axial canvas screenshot that are tinted (grey CT has R == G == B)."""
    import cv2

    png = page.locator("#view-axial canvas").screenshot()
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(int)
    return int((np.abs(bgr[..., 2] - bgr[..., 1]) > 30).sum())


def wait_axial_labels(page, z: int) -> int:
    """Go to slice ``z`` and wait until its labels are shown; the page's foreground count."""
    page.evaluate(f"window.labeler.goTo({z})")
    page.wait_for_function(
        f"() => {{ const v = window.labeler.views.axial; return v.labelKey && "
        f"v.labelKey.startsWith('{z}/') && !v.busy; }}", timeout=WAIT_S * 1000)
    return page.evaluate("window.labeler.views.axial.labels.ids.reduce((n, v) => n + (v > 0), 0)")


def test_draw_propagate_save_in_chromium(served, scans):
    labeler, url = served
    truth = scans["lps"].labels
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("window.labeler && window.labeler.state.ready",
                                   timeout=WAIT_S * 1000)
            z = 12
            assert wait_axial_labels(page, z) == 0 and overlay_pixels(page) == 0

            # a stroke through the liver of slice 12, in screen coordinates
            ys, xs = np.nonzero(truth[z] == 1)
            box = page.locator("#view-axial canvas").bounding_box()
            height, width = truth.shape[1:]
            to_screen = lambda x, y: (box["x"] + (x + 0.5) * box["width"] / width,  # noqa: E731
                                      box["y"] + (y + 0.5) * box["height"] / height)
            cy, cx = int(np.median(ys)), int(np.median(xs))
            page.mouse.move(*to_screen(cx - 3, cy))
            page.mouse.down()
            for step in range(-3, 4):
                page.mouse.move(*to_screen(cx + step, cy + step // 2))
            page.mouse.up()
            page.wait_for_function("window.labeler.state.status.keys.length === 1",
                                   timeout=WAIT_S * 1000)
            assert labeler.session.key_slices == [z] and (labeler.session.key_masks[z] == 1).any()
            # "Key as shown" on an undrawn slice: an empty key (the organs end there)
            page.evaluate("window.labeler.goTo(22)")
            page.click("#accept")
            page.wait_for_function("window.labeler.state.status.keys.length === 2",
                                   timeout=WAIT_S * 1000)
            assert labeler.session.key_slices == [z, 22]
            assert not labeler.session.key_masks[22].any()
            page.evaluate(f"window.labeler.goTo({z})")

            page.click("#propagate")
            page.wait_for_function(
                "() => { const s = window.labeler.state.status; return !s.running && "
                "s.progress.seconds !== null && !s.up_to_date.includes('0'); }",
                timeout=WAIT_S * 1000)
            for other in (10, 14):
                assert wait_axial_labels(page, other) > 0, f"no overlay on slice {other}"
                assert overlay_pixels(page) > 0
            page.click("#save")
            page.wait_for_function(
                "document.querySelector('#save-path').textContent.startsWith('saved')",
                timeout=WAIT_S * 1000)
            shown = page.inner_text("#save-path")
            assert str(labeler.output.resolve()) in shown
            assert not errors, errors
        finally:
            browser.close()
    saved, _ = load_labels(labeler.output, reference=load_volume(scans["lps"].ct))
    assert (saved[10] == 1).any() and (saved[14] == 1).any()
    np.testing.assert_array_equal(saved, labeler.session.labels)
    assert json.loads(label_map_path(labeler.output).read_text())["key_slices"] == [12, 22]
