"""Non-learned ways to fill a volume from key slices, the yardsticks for propagation."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def nearest_key_copy(keys: Mapping[int, np.ndarray], depth: int) -> np.ndarray:
    """Every slice takes the labels of its nearest key slice (ties: the lower key).

    ``keys``: slice index -> (H, W) labels. Returns (depth, H, W) with the keys' dtype.
    """
    if not keys:
        raise ValueError("nearest_key_copy needs at least one key slice")
    indices = np.array(sorted(keys))
    if indices.min() < 0 or indices.max() >= depth:
        raise ValueError(f"key slices {indices.tolist()} are outside a volume of {depth} slices")
    distance = np.abs(np.arange(depth)[:, None] - indices[None, :])
    nearest = indices[np.argmin(distance, axis=1)]  # argmin takes the first (lower) on ties
    return np.stack([keys[int(z)] for z in nearest])


def contour_interpolation(keys: Mapping[int, np.ndarray], depth: int) -> np.ndarray:
    """ITK's morphological contour interpolation (Zukic et al.) between the key slices, per
    label, along the slice axis. Slices beyond the outermost keys stay background (it does not
    extrapolate). Needs the optional ``itk-morphologicalcontourinterpolation`` package
    (``pip install "slicevos[interp]"``).

    ITK runs in a fresh interpreter that never imports torch: ITK's SWIG runtime and torch in
    one process corrupt the heap at interpreter exit (``malloc_consolidate(): unaligned
    fastbin chunk``, exit code 134), so the two are never loaded together.
    """
    if importlib.util.find_spec("itk") is None:
        from slicevos.errors import InputError

        raise InputError(None, "contour interpolation needs ITK, which is not installed",
                         'pip install "slicevos[interp]"')
    if not keys:
        raise ValueError("contour_interpolation needs at least one key slice")
    first = next(iter(keys.values()))
    stack = np.zeros((depth, *first.shape), dtype=np.uint8)
    for z, labels in keys.items():
        if not 0 <= z < depth:
            raise ValueError(f"key slice {z} is outside a volume of {depth} slices")
        stack[z] = labels
    out = _interpolate_in_subprocess(stack)
    for z, labels in keys.items():
        out[z] = labels  # keys come out exactly as given
    return out


def _interpolate_in_subprocess(stack: np.ndarray) -> np.ndarray:
    """Run :func:`slicevos.benchmarks.itk_worker.interpolate` on ``stack`` (D, H, W) uint8 in a
    fresh interpreter that imports numpy and ITK only (never torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "keys.npy", Path(tmp) / "out.npy"
        np.save(source, stack)
        done = subprocess.run([sys.executable, "-m", "slicevos.benchmarks.itk_worker",
                               str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0 or not target.exists():
            raise RuntimeError(f"ITK contour interpolation failed: {done.stderr.strip()[-500:]}")
        return np.load(target)
