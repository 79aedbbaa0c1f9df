"""Helpers of the labeler tests: drawing true labels through the API, waiting for propagation."""

from __future__ import annotations

import time

import numpy as np

TOKEN = "test-token"
SHAPE = (24, 64, 64)
WAIT_S = 180.0  # generous: the machine may be busy; polling ends as soon as it is done


def row_runs(mask: np.ndarray) -> list[list[list[int]]]:
    """The horizontal runs of a 2D bool mask as two-point strokes [[x0, y], [x1, y]]."""
    runs = []
    for y in np.flatnonzero(mask.any(axis=1)):
        row = np.r_[False, mask[y], False].astype(np.int8)
        edges = np.flatnonzero(np.diff(row))
        runs += [[[int(a), int(y)], [int(b) - 1, int(y)]] for a, b in zip(edges[::2], edges[1::2],
                                                                            strict=True)]
    return runs


def draw_truth(client, truth: np.ndarray, z: int, organs=(1, 5, 6, 13)) -> None:
    """Draw the true pixels of ``organs`` on slice ``z`` exactly, as radius-0 strokes."""
    for organ in organs:
        for points in row_runs(truth[z] == organ):
            response = client.post("/api/stroke", json={"z": z, "label": organ, "tool": "brush",
                                                        "radius": 0, "points": points})
            assert response.status_code == 200, response.text


def propagate_and_wait(client) -> dict:
    response = client.post("/api/propagate", json={})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status = client.get("/api/status").json()
        if not status["running"]:
            assert status["error"] is None, status["error"]
            return status
        time.sleep(0.05)
    raise AssertionError(f"propagation still running after {WAIT_S} s")
