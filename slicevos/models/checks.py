"""Input checks shared by the segmentation networks (one clear message per mistake)."""

from __future__ import annotations

import torch

from slicevos.errors import InputError
from slicevos.preprocessing.padding import padded_size


def check_inputs(images: torch.Tensor, positions: torch.Tensor | None, output_stride: int,
                 model_name: str, needs_positions: bool) -> None:
    """Validate ``images`` (B, C, H, W) with H, W multiples of ``output_stride`` and, when
    ``needs_positions``, ``positions`` (B,). Raises :class:`InputError` (a ``ValueError``)."""
    if images.ndim != 4:
        raise InputError(None, f"{model_name} expects images of shape (B, C, H, W), got "
                         f"{tuple(images.shape)}", "add the batch axis (images[None])")
    height, width = images.shape[-2:]
    if height % output_stride or width % output_stride:
        target = padded_size(height, width, output_stride)
        raise InputError(None, f"{model_name} expects image height and width divisible by "
                         f"{output_stride}, got {height}x{width}",
                         f"pad to {target} (slicevos.preprocessing.padding.pad_to_multiple)")
    if not needs_positions:
        return
    if positions is None:
        raise InputError(None, f"{model_name} was built with position_encoding=True but got no "
                         "positions", "pass relative slice positions z / (D - 1), shape (B,)")
    if tuple(positions.shape) != (images.shape[0],):
        raise InputError(None, f"{model_name} expects positions of shape ({images.shape[0]},), "
                         f"got {tuple(positions.shape)}", "pass one relative position per image")
