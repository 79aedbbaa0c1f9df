"""End to end in a real headless browser (Debian's chromium driven by Playwright): load the
page, draw a stroke on an axial slice, propagate, see the overlay on other slices, save; and
the per-organ keys: correcting one organ keeps the others propagated, "<organ> not here",
undo, the key strip and "check next" of the selected organ."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from slicevos.io.loader import load_volume
from slicevos.io.nifti import label_map_path, load_labels

from .helpers import TOKEN, WAIT_S

DONE = ("() => { const s = window.labeler.state.status; return !s.running && "
        "s.progress.seconds !== null && !s.up_to_date.includes('0'); }")

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


@contextmanager
def chromium_page(url: str) -> Iterator[tuple[object, list[str]]]:
    """The page at ``url`` in headless chromium, ready; and the list of its script errors."""
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
            yield page, errors
        finally:
            browser.close()


def wait_status(page, condition: str) -> dict:
    """Wait until the page's status ``s`` meets the JS ``condition``; that status."""
    page.wait_for_function(f"() => {{ const s = window.labeler.state.status; return {condition}; }}",
                           timeout=WAIT_S * 1000)
    return page.evaluate("window.labeler.state.status")


def propagate_in_page(page) -> dict:
    """Click Propagate (some slices must be out of date) and wait until all are done."""
    assert "0" in page.evaluate("window.labeler.state.status.up_to_date")
    page.click("#propagate")
    page.wait_for_function(DONE, timeout=WAIT_S * 1000)
    return page.evaluate("window.labeler.state.status")


def screen_point(page, selector: str, shape: tuple[int, int]):
    """Canvas pixel (x, y) -> page coordinates of its centre, for a canvas of ``shape`` (h, w)."""
    box = page.locator(selector).bounding_box()
    height, width = shape
    return lambda x, y: (box["x"] + (x + 0.5) * box["width"] / width,
                         box["y"] + (y + 0.5) * box["height"] / height)


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
    with chromium_page(url) as (page, errors):
        z = 12
        assert wait_axial_labels(page, z) == 0 and overlay_pixels(page) == 0

        # a stroke through the liver of slice 12, in screen coordinates
        ys, xs = np.nonzero(truth[z] == 1)
        to_screen = screen_point(page, "#view-axial canvas", truth.shape[1:])
        cy, cx = int(np.median(ys)), int(np.median(xs))
        page.mouse.move(*to_screen(cx - 3, cy))
        page.mouse.down()
        for step in range(-3, 4):
            page.mouse.move(*to_screen(cx + step, cy + step // 2))
        page.mouse.up()
        wait_status(page, "s.keys.length === 1")
        assert labeler.session.any_key_slices == [z] and labeler.session.organ_keys[1][z].any()
        # "Key as shown" on an undrawn slice: an empty key (the organs end there)
        page.evaluate("window.labeler.goTo(22)")
        page.click("#accept")
        wait_status(page, "s.keys.length === 2")
        assert labeler.session.any_key_slices == [z, 22] and labeler.session.key_slices == [22]
        assert not labeler.session.key_masks[22].any()
        assert page.inner_text("#view-axial .pos").endswith("(key: whole slice)")
        page.evaluate(f"window.labeler.goTo({z})")

        propagate_in_page(page)
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
    saved, _ = load_labels(labeler.output, reference=load_volume(scans["lps"].ct))
    assert (saved[10] == 1).any() and (saved[14] == 1).any()
    np.testing.assert_array_equal(saved, labeler.session.labels)
    assert json.loads(label_map_path(labeler.output).read_text())["key_slices"] == [12, 22]


def check_next_shown(page) -> tuple[list[int], str, str, dict]:
    """The "check next" slices shown, the list's organ ("any" or an id), its heading and the
    status it was drawn from (read at once, so a poll in between cannot mix two)."""
    shown = page.evaluate("""() => [
        [...document.querySelectorAll('#check-next li')].map((li) => +li.dataset.z),
        document.querySelector('#check-next').dataset.organ,
        document.querySelector('#check-next-organ').textContent,
        window.labeler.state.status]""")
    return tuple(shown)


def test_organ_keys_in_chromium(served, scans):
    """Correct the liver (1) on a slice where it and the inferior vena cava (6) are both
    propagated: the slice becomes a key for the liver only and the vena cava's labels there
    stay as propagated; "liver not here" past the liver's end and its undo; the key strip and
    "check next" follow the selected organ."""
    labeler, url = served
    truth = scans["lps"].labels
    drawn, corrected, past = 12, 15, 21  # the liver is on 6..18, the vena cava on 2..21
    for organ in (1, 6):  # (a) both organs drawn exactly on one slice (organ keys)
        labeler.paint_organ(drawn, organ, truth[drawn] == organ)
    assert labeler.session.key_slices == [] and labeler.session.any_key_slices == [drawn]

    with chromium_page(url) as (page, errors):
        status = propagate_in_page(page)
        assert status["organ_keys"] == {"1": [drawn], "6": [drawn]}
        labels = labeler.session.labels[corrected]
        assert (labels == 1).any() and (labels == 6).any()
        vena_cava = labels == 6

        # (b) a short liver stroke on slice 15, well away from the vena cava
        wait_axial_labels(page, corrected)
        page.click('#organs li[data-id="1"]')
        radius = page.evaluate("window.labeler.state.radius")
        ys, xs = np.nonzero(truth[corrected] == 1)
        vy, vx = np.nonzero(vena_cava | (truth[corrected] == 6))
        far = np.hypot(ys[:, None] - vy[None], xs[:, None] - vx[None]).min(1) > radius + 6
        centre = np.array([np.median(ys), np.median(xs)])
        cy, cx = min(zip(ys[far], xs[far], strict=True),
                     key=lambda p: float(np.hypot(*(np.array(p) - centre))))
        to_screen = screen_point(page, "#view-axial canvas", truth.shape[1:])
        page.mouse.move(*to_screen(cx - 2, cy))
        page.mouse.down()
        for x in range(cx - 1, cx + 3):
            page.mouse.move(*to_screen(x, cy))
        page.mouse.up()
        status = wait_status(page, f"(s.organ_keys['1'] || []).includes({corrected})")
        assert status["organ_keys"]["6"] == [drawn] and status["whole_keys"] == []
        assert page.inner_text("#view-axial .pos").endswith("(key: liver)")
        strip = page.evaluate("window.labeler.stripKeys()")
        assert strip["own"] == [drawn, corrected] and strip["whole"] == strip["other"] == []

        # (c) propagated again: the vena cava on slice 15 is as it was, and no key there
        status = propagate_in_page(page)
        assert corrected in status["organ_keys"]["1"]
        assert corrected not in status["organ_keys"]["6"]
        np.testing.assert_array_equal(labeler.session.labels[corrected] == 6, vena_cava)
        assert sorted(labeler.session.organ_keys[1]) == [drawn, corrected]
        assert sorted(labeler.session.organ_keys[6]) == [drawn]
        assert (labeler.session.labels[corrected][cy, cx - 2:cx + 3] == 1).all()

        # (d) "liver not here" on a slice past its end (button, key X, shift+click), undone
        page.evaluate(f"window.labeler.goTo({past})")
        assert page.inner_text("#organ-end") == "liver not here"
        page.click("#organ-end")
        status = wait_status(page, f"s.organ_keys['1'].includes({past})")
        assert not labeler.session.organ_keys[1][past].any()
        assert not (labeler.session.labels[past] == 1).any()
        assert past not in status["organ_keys"]["6"]
        assert page.inner_text("#view-axial .pos").endswith("(key: liver)")
        page.click("#undo")
        status = wait_status(page, f"!s.organ_keys['1'].includes({past})")
        assert status["organ_keys"]["1"] == [drawn, corrected]
        assert past not in labeler.session.organ_keys[1]
        assert not page.inner_text("#view-axial .pos").endswith(")")
        assert page.evaluate("window.labeler.stripKeys().own") == [drawn, corrected]
        page.keyboard.press("x")
        wait_status(page, f"s.organ_keys['1'].includes({past})")
        page.keyboard.press("Control+z")
        wait_status(page, f"!s.organ_keys['1'].includes({past})")
        depth = truth.shape[0]
        coronal = screen_point(page, "#view-coronal canvas", (depth, truth.shape[2]))
        page.keyboard.down("Shift")
        page.mouse.click(*coronal(truth.shape[2] // 2, depth - 1 - (past - 1)))
        page.keyboard.up("Shift")
        wait_status(page, f"s.organ_keys['1'].includes({past - 1})")
        assert page.evaluate("window.labeler.state.z") == past - 1
        page.click("#undo")
        status = wait_status(page, f"!s.organ_keys['1'].includes({past - 1})")
        assert status["organ_keys"] == {"1": [drawn, corrected], "6": [drawn]}

        # (e) "check next" and the key strip of the selected organ
        slices, organ, heading, status = check_next_shown(page)
        assert organ == "1" and heading == "for liver"
        assert slices == status["check_next_organ"]["1"]
        page.click('#organs li[data-id="6"]')
        slices, organ, heading, status = check_next_shown(page)
        assert organ == "6" and heading == "for inferior vena cava"
        assert slices == status["check_next_organ"]["6"] and slices
        assert page.evaluate("window.labeler.stripKeys()") == {
            "organ": 6, "whole": [], "own": [drawn], "other": [corrected]}
        page.evaluate(f"window.labeler.goTo({corrected})")
        assert page.inner_text("#view-axial .pos").endswith("(key: liver)")
        page.click('#organs li[data-id="2"]')  # no key: the list of any organ
        slices, organ, heading, status = check_next_shown(page)
        assert organ == "any" and heading == "for any organ"
        assert slices == status["check_next"]
        assert page.inner_text("#organ-end") == "right kidney not here"
        assert not errors, errors
