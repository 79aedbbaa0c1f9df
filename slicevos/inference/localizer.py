"""Abdomen localizer at inference: slice probabilities, then the z-range to segment.

::

    localizer = Localizer.from_checkpoint("runs/localizer/best.pt", device="cpu")
    scores = localizer.slice_scores(image, stride=2, windows=pipeline_windows)  # (D,) float32
    # or, whatever windows the pipeline uses: scores = localizer.slice_scores_hu(volume.hu)
    z_range = predict_z_range(scores, margin_slices=3)  # (start, stop) or None
    work = image if z_range is None else image[z_range[0]:z_range[1]]

A range is half-open, ``(start, stop)`` like a Python slice: slices ``start .. stop - 1`` are
processed. None means "no abdomen found: process the whole volume".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import median_filter

from slicevos.config import from_dict
from slicevos.data.localizer_data import WindowSpec, match_windows
from slicevos.errors import InputError
from slicevos.inference.checkpoints import build_and_load, load_with_windows
from slicevos.models.localizer import LocalizerModelConfig, LocalizerNet
from slicevos.preprocessing.windowing import Window, resolve_windows, window_volume

KIND, TOOL = "localizer", "slicevos-train-localizer"


def predict_z_range(scores: np.ndarray, threshold: float = 0.5, margin_slices: int = 3,
                    smooth_slices: int = 5) -> tuple[int, int] | None:
    """The half-open slice range ``(start, stop)`` holding the abdomen, or None (no slice passes).

    ``scores`` float (D,) abdomen probabilities along z. Slices with score >= ``threshold`` are
    abdomen; a median filter over ``smooth_slices`` slices (odd; 1 = off) removes isolated flips
    (runs shorter than ``smooth_slices // 2 + 1``); the range runs from the first to the last
    abdomen slice, widened by ``margin_slices`` on both sides and clamped to ``0..D``.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
        raise InputError(None, f"scores must be finite float (D,) with D >= 1, got shape "
                         f"{scores.shape}", "pass Localizer.slice_scores(...) of one volume")
    if smooth_slices < 1 or smooth_slices % 2 == 0 or margin_slices < 0:
        raise InputError(None, f"smooth_slices {smooth_slices} / margin_slices {margin_slices} "
                         "are invalid", "use an odd smooth_slices >= 1 and margin_slices >= 0")
    flags = scores >= threshold
    if smooth_slices > 1:
        flags = median_filter(flags.astype(np.uint8), size=smooth_slices, mode="constant") > 0
    hits = np.flatnonzero(flags)
    if hits.size == 0:
        return None
    return (max(0, int(hits[0]) - margin_slices),
            min(scores.size, int(hits[-1]) + 1 + margin_slices))


def sampled_slices(depth: int, stride: int) -> np.ndarray:
    """Slices classified with ``stride``: 0, stride, 2 * stride, ... and always the last one."""
    if stride < 1:
        raise InputError(None, f"stride must be >= 1, got {stride}", "use 1 to classify every "
                         "slice, or e.g. 2 or 4 to classify every few and interpolate")
    picked = np.arange(0, depth, stride)
    return picked if picked[-1] == depth - 1 else np.append(picked, depth - 1)


class Localizer:
    """Runs a ``LocalizerNet`` over the slices of one volume.

    ``windows``: the CT windows the network was trained on, in channel order (a checkpoint
    stores them). ``batch_size`` slices go through the network at once; ``amp_dtype`` (e.g.
    ``torch.bfloat16``) is used on CUDA only.
    """

    def __init__(self, model: LocalizerNet, windows: Sequence[WindowSpec],
                 device: str | torch.device = "cpu", batch_size: int = 32,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.windows: tuple[Window, ...] = resolve_windows(windows)
        if len(self.windows) != model.in_channels:
            raise ValueError(f"{len(self.windows)} windows for a {model.in_channels}-channel model")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.amp_dtype = amp_dtype if self.device.type == "cuda" else None
        self.path: Path | None = None

    @classmethod
    def from_checkpoint(cls, path: str | PathLike, device: str | torch.device = "cpu",
                        batch_size: int = 32, amp_dtype: torch.dtype | None = None) -> Localizer:
        """Rebuild the localizer from a ``slicevos-train-localizer`` checkpoint alone."""
        payload, windows = load_with_windows(path, KIND, TOOL)
        config = from_dict(LocalizerModelConfig, payload["config"]["model"], str(path))
        model = build_and_load(path, lambda: LocalizerNet(config, in_channels=len(windows)),
                               payload["model"], TOOL)
        localizer = cls(model, windows, device, batch_size, amp_dtype)
        localizer.path = Path(path)
        return localizer

    def slice_scores(self, image: np.ndarray, stride: int = 1,
                     windows: Sequence[WindowSpec] | None = None) -> np.ndarray:
        """Abdomen probability per slice, float32 (D,).

        ``image``: uint8 (D, C, H, W) windowed with the localizer's windows, or with ``windows``
        (the image's own windows, in channel order; the localizer picks its channels among
        them). With ``stride`` > 1 only every stride-th slice (and the last) is classified and
        the rest interpolated linearly along z.
        """
        if image.ndim != 4 or image.dtype != np.uint8 or len(image) == 0:
            raise InputError(None, f"expected a windowed uint8 volume (D, C, H, W), got "
                             f"{image.dtype} {image.shape}", "window the HU volume "
                             "(slicevos.preprocessing.window_volume), or call slice_scores_hu")
        channels = list(range(image.shape[1]))
        if windows is not None:
            if len(windows) != image.shape[1]:
                raise InputError(None, f"windows lists {len(windows)} window(s) for an image "
                                 f"of {image.shape[1]} channel(s)", "pass one window per channel")
            channels = match_windows(windows, self.windows)
            if channels is None:
                raise InputError(None, f"the localizer needs the windows {self._names()}, not "
                                 "all among the image's", "call slice_scores_hu with the HU "
                                 "volume instead")
        elif image.shape[1] != len(self.windows):
            raise InputError(None, f"the localizer was trained on {len(self.windows)} window(s) "
                             f"{self._names()}, the image has {image.shape[1]} channel(s)",
                             "pass windows= (the image's windows) or call slice_scores_hu")
        return self._scores(lambda z: np.asarray(image[z][:, channels]), len(image), stride)

    def slice_scores_hu(self, hu: np.ndarray, stride: int = 1) -> np.ndarray:
        """Abdomen probability per slice, float32 (D,), from a HU volume float (D, H, W): the
        localizer windows the slices it classifies with its own windows."""
        if hu.ndim != 3 or len(hu) == 0 or not np.issubdtype(hu.dtype, np.number):
            raise InputError(None, f"expected a HU volume (D, H, W), got {hu.dtype} {hu.shape}",
                             "pass Volume.hu (slicevos.io.load_volume)")
        return self._scores(lambda z: window_volume(hu[z], self.windows), len(hu), stride)

    def _names(self) -> list[str]:
        return [f"L{w.level:g}/W{w.width:g}" for w in self.windows]

    @torch.no_grad()
    def _scores(self, fetch: Callable[[np.ndarray], np.ndarray], depth: int,
                stride: int) -> np.ndarray:
        """Classify the sampled slices in batches; ``fetch(z)`` -> uint8 (n, C, H, W)."""
        picked = sampled_slices(depth, stride)
        probs = []
        for start in range(0, len(picked), self.batch_size):
            batch = torch.from_numpy(fetch(picked[start:start + self.batch_size]))
            batch = batch.to(self.device).float().div_(255.0)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(batch)
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        probs = np.concatenate(probs)
        if len(picked) == depth:
            return probs.astype(np.float32)
        return np.interp(np.arange(depth), picked, probs).astype(np.float32)
