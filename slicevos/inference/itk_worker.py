"""``python -m slicevos.inference.itk_worker KEYS.npy OUT.npy``: ITK's morphological contour
interpolation of a uint8 label stack (D, H, W) along axis 0, in a process without torch (see
``slicevos.inference.baselines.contour_interpolation``)."""

from __future__ import annotations

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
    np.save(target, interpolate(np.load(source)))
