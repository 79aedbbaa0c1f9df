"""``python -m slicevos.benchmarks.itk_worker KEYS.npy OUT.npy``: ITK's morphological contour
interpolation of a uint8 label stack (D, H, W) along axis 0, in a process without torch (see
``slicevos.benchmarks.baselines.contour_interpolation``)."""

from __future__ import annotations

import os
import sys

import numpy as np


def interpolate(stack: np.ndarray) -> np.ndarray:
    import itk

    interpolator = itk.MorphologicalContourInterpolator.New(itk.image_from_array(stack))
    interpolator.SetAxis(2)  # ITK orders axes (x, y, z): numpy axis 0 (slices) is ITK axis 2
    interpolator.Update()
    return itk.array_from_image(interpolator.GetOutput()).astype(np.uint8)


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    partial = f"{target}.partial.npy"
    np.save(partial, interpolate(np.load(source)))
    os.replace(partial, target)
    sys.stdout.flush()
    sys.stderr.flush()
    # ITK's SWIG runtime can corrupt the heap while the interpreter tears down (numpy 2.x and
    # ITK 5.4, even without torch: "malloc_consolidate(): unaligned fastbin chunk", exit 134);
    # the result is complete on disk, so leave without the teardown
    os._exit(0)
