"""The baseline users would otherwise pick: nnU-Net v2's 3d_fullres inference, re-created for
timing (issue 5, "Measure"); random weights, so its labels mean nothing.

What is copied from nnU-Net v2 (``nnunetv2/preprocessing``, ``nnunetv2/inference``):

- CT normalisation: clip to the 0.5/99.5 percentiles of the dataset's foreground intensities,
  then z-score with the foreground mean/std (fixed typical abdominal-CT values here).
- Resampling to the plan spacing and back (:mod:`slicevos.benchmarks.nnunet_resample`):
  order-3 spline in-plane per slice and order 0 across slices for anisotropic CT; logits go
  back with order 1 in-plane.
- Sliding window (``sliding_window_prediction``): padding to at least the patch, tile starts
  with step 0.5 of the patch, Gaussian importance map (sigma = patch/8), batch 1, results
  accumulated on the device, optional mirroring TTA (all 3 axes = 8 passes, nnU-Net's default),
  then softmax + argmax at the original shape. Not copied: cropping to the non-zero box (a CT in
  HU is non-zero nearly everywhere) and the data-loading worker processes.

``dynamic_network_architectures`` (optional extra ``bench``) is imported only when a network is
built.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from slicevos.benchmarks.nnunet_resample import Triple, needs_separate_z, resample_volume
from slicevos.errors import InputError
from slicevos.metrics.efficiency import EfficiencyMeter


@dataclass(frozen=True)
class NNUNetPlan:
    """A typical nnU-Net v2 3d_fullres plan for abdominal CT; axes (z, y, x), spacing in mm.

    Pattern of nnU-Net's plans for FLARE22/AMOS-like data: ~2.5 mm slices at ~0.8 mm in-plane,
    6 stages of 32..320 features (base 32, cap 320), 2 convs per stage in encoder and decoder,
    kernel 1 across slices in the first stage (z spacing > 2x in-plane), InstanceNorm + LeakyReLU,
    no deep supervision at inference. The patch is issue 5's (96, 160, 160). Intensity stats:
    typical foreground (organ) statistics of abdominal CT in HU; they change no timing.
    """

    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8)
    patch_size: Triple = (96, 160, 160)
    features: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    strides: tuple[Triple, ...] = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    kernel_sizes: tuple[Triple, ...] = ((1, 3, 3),) + ((3, 3, 3),) * 5
    n_conv_per_stage: int = 2
    num_classes: int = 14
    clip_hu: tuple[float, float] = (-958.0, 270.0)  # foreground percentiles 0.5 / 99.5
    mean_hu: float = 97.0
    std_hu: float = 138.0
    anisotropy_threshold: float = 3.0  # nnU-Net's ANISO_THRESHOLD

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.strides) == len(self.kernel_sizes) == n >= 1):
            self._bad(f"{n} feature sizes, {len(self.strides)} strides and "
                      f"{len(self.kernel_sizes)} kernel sizes", "give one of each per stage")
        total = np.prod(np.array(self.strides), axis=0)
        if any(p % t for p, t in zip(self.patch_size, total, strict=True)):
            self._bad(f"patch {self.patch_size} is not divisible by the total stride "
                      f"{tuple(int(t) for t in total)}", "use a patch that is a multiple of it")
        if min(self.spacing) <= 0 or self.std_hu <= 0 or self.num_classes < 2:
            self._bad(f"spacing {self.spacing}, std {self.std_hu} or {self.num_classes} classes",
                      "use positive spacings and std, and at least 2 classes")

    @staticmethod
    def _bad(problem: str, fix: str) -> None:
        raise InputError("NNUNetPlan", problem, fix)


def build_plain_conv_unet(plan: NNUNetPlan) -> torch.nn.Module:
    """nnU-Net's ``PlainConvUNet`` for ``plan`` with random weights, in eval mode.

    Input (B, 1, *patch) float32; output (B, num_classes, *patch) logits."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        raise InputError(None, "the nnU-Net baseline needs dynamic_network_architectures, "
                         "which is not installed", 'pip install -e ".[bench]"') from None
    net = PlainConvUNet(
        input_channels=1, n_stages=len(plan.features), features_per_stage=list(plan.features),
        conv_op=torch.nn.Conv3d, kernel_sizes=[list(k) for k in plan.kernel_sizes],
        strides=[list(s) for s in plan.strides], n_conv_per_stage=plan.n_conv_per_stage,
        num_classes=plan.num_classes, n_conv_per_stage_decoder=plan.n_conv_per_stage,
        conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False)
    return net.eval()


def _check_volume(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> None:
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(None, f"volume has shape {hu.shape}, expected (D, H, W)",
                         "pass one 3D CT volume")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise InputError(None, f"spacing {spacing_mm} must be three positive mm values",
                         "pass (dz, dy, dx) in mm")


def nnunet_preprocess(hu: np.ndarray, spacing_mm: tuple[float, float, float],
                      plan: NNUNetPlan) -> tuple[torch.Tensor, Triple]:
    """(D, H, W) HU, spacing (dz, dy, dx) mm -> ((1, 1, D', H', W') float32 normalised and
    resampled to ``plan.spacing``, the original (D, H, W) to resample back to)."""
    _check_volume(hu, spacing_mm)
    image = np.clip(hu.astype(np.float32), *plan.clip_hu)
    image = (image - plan.mean_hu) / max(plan.std_hu, 1e-8)
    new = tuple(int(round(n * s / t)) for n, s, t in zip(hu.shape, spacing_mm, plan.spacing, strict=True))
    sep = needs_separate_z(tuple(spacing_mm), plan.spacing, plan.anisotropy_threshold)
    image = resample_volume(image[None], new, sep, order=3, order_z=0)
    return torch.from_numpy(image)[None], tuple(hu.shape)


def tile_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """nnU-Net's tile starts along one axis of ``size`` >= ``patch`` voxels: the fewest tiles at
    most ``step * patch`` apart, spread evenly from 0 to ``size - patch``."""
    if patch < 1 or size < patch or not 0 < step <= 1:
        raise ValueError(f"need size {size} >= patch {patch} >= 1 and 0 < step {step} <= 1")
    n = int(math.ceil((size - patch) / (patch * step))) + 1
    spacing = (size - patch) / (n - 1) if n > 1 else 0.0
    return [int(round(spacing * i)) for i in range(n)]


def gaussian_importance_map(patch: Triple, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """(pz, py, px) float32 weights: a Gaussian with sigma ``sigma_scale * patch`` per axis,
    centred on ``patch // 2``, max 1, zeros raised to the smallest positive value (nnU-Net)."""
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(delta, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g = g / g.max()
    g[g == 0] = g[g > 0].min()
    return torch.from_numpy(g.astype(np.float32))


def _mirrored_forward(net: torch.nn.Module, x: torch.Tensor, mirror_axes: tuple[int, ...]) -> torch.Tensor:
    """Mean of ``net`` over every flip combination of ``mirror_axes`` (0..2 = z, y, x)."""
    prediction = net(x).float()
    dims = [a + 2 for a in mirror_axes]
    flips = [c for k in range(1, len(dims) + 1) for c in combinations(dims, k)]
    for axes in flips:
        prediction += torch.flip(net(torch.flip(x, axes)), axes).float()
    return prediction / (len(flips) + 1)


@torch.inference_mode()
def sliding_window_predict(net: torch.nn.Module, image: torch.Tensor, plan: NNUNetPlan,
                           step_size: float = 0.5, use_gaussian: bool = True,
                           mirror_axes: tuple[int, ...] = (), device: str | torch.device = "cpu",
                           max_tiles: int | None = None, progress: bool = False) -> torch.Tensor:
    """(1, 1, D, H, W) -> (C, D, H, W) float32 logits on ``device`` (nnU-Net's sliding window).

    ``mirror_axes=(0, 1, 2)`` is nnU-Net's default TTA (8 passes per tile). ``max_tiles`` stops
    after that many tiles (for timing only: the logits are then incomplete). fp16 autocast on CUDA.
    """
    if max_tiles is not None and max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1 or None, got {max_tiles}")
    device = torch.device(device)
    net = net.to(device)
    shape = tuple(image.shape[2:])
    padded = tuple(max(s, p) for s, p in zip(shape, plan.patch_size, strict=True))
    before = [(p - s) // 2 for s, p in zip(shape, padded, strict=True)]
    pad = [v for b, s, p in zip(before[::-1], shape[::-1], padded[::-1], strict=True) for v in (b, p - s - b)]
    data = torch.nn.functional.pad(image.float(), pad).to(device)
    starts = [tile_starts(s, p, step_size) for s, p in zip(padded, plan.patch_size, strict=True)]
    tiles = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]][:max_tiles]
    weight = gaussian_importance_map(plan.patch_size).to(device) if use_gaussian else \
        torch.ones(plan.patch_size, device=device)
    logits = torch.zeros((plan.num_classes, *padded), dtype=torch.float32, device=device)
    counts = torch.zeros(padded, dtype=torch.float32, device=device)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    for start in tqdm(tiles, desc="nnU-Net tiles", disable=not progress):
        box = tuple(slice(s, s + p) for s, p in zip(start, plan.patch_size, strict=True))
        with autocast:
            pred = _mirrored_forward(net, data[(slice(None), slice(None), *box)], mirror_axes)
        logits[(slice(None), *box)] += pred[0] * weight
        counts[box] += weight
    logits /= counts.clamp_min(torch.finfo(torch.float32).tiny)
    return logits[(slice(None), *(slice(b, b + s) for b, s in zip(before, shape, strict=True)))]


def logits_to_labels(logits: torch.Tensor, shape: Triple, plan: NNUNetPlan,
                     spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(C, D', H', W') logits at ``plan.spacing`` -> (D, H, W) uint8 labels at ``shape``:
    resample (order 1 in-plane, 0 across slices), softmax, argmax, as nnU-Net exports."""
    if tuple(logits.shape[1:]) == tuple(shape):  # no resampling: softmax into a new array
        probs = logits.detach().float().cpu().clone()
    else:
        sep = needs_separate_z(plan.spacing, tuple(spacing_mm), plan.anisotropy_threshold)
        probs = torch.from_numpy(resample_volume(logits.float().cpu().numpy(), shape, sep, order=1))
    probs.sub_(probs.amax(0, keepdim=True)).exp_()  # softmax in place: argmax is unchanged
    probs.div_(probs.sum(0, keepdim=True))
    return probs.argmax(0).to(torch.uint8).numpy()


@dataclass
class BaselineResult:
    """Labels (D, H, W) uint8 and the cost: seconds per stage, peak memory (MB)."""

    labels: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)  # preprocess, predict, resample_back
    total_s: float = 0.0
    resampled_shape: Triple = (0, 0, 0)  # (D', H', W') at plan spacing
    tiles_total: int = 0
    tiles_run: int = 0
    memory: dict[str, float | None] = field(default_factory=dict)  # EfficiencyMeter.to_dict()

    @property
    def seconds_per_tile(self) -> float:
        return self.seconds["predict"] / max(self.tiles_run, 1)

    @property
    def estimated_total_s(self) -> float:
        """``total_s`` with the predict stage scaled to every tile (== total_s if all ran)."""
        return self.total_s - self.seconds["predict"] + self.seconds_per_tile * self.tiles_total


def count_tiles(shape: Triple, plan: NNUNetPlan, step_size: float = 0.5) -> int:
    """Tiles of the sliding window over a (D', H', W') volume at plan spacing."""
    return math.prod(len(tile_starts(max(s, p), p, step_size)) for s, p in zip(shape, plan.patch_size, strict=True))


def run_nnunet_baseline(hu: np.ndarray, spacing_mm: tuple[float, float, float],
                        plan: NNUNetPlan | None = None, device: str = "cpu", mirror: bool = False,
                        net: torch.nn.Module | None = None, max_tiles: int | None = None,
                        progress: bool = False) -> BaselineResult:
    """nnU-Net 3d_fullres inference on one (D, H, W) HU volume, timed per stage.

    ``net`` (from :func:`build_plain_conv_unet`) is built if None, outside the timing.
    ``mirror``: nnU-Net's default 8-fold mirroring TTA. ``max_tiles``: see
    :func:`sliding_window_predict`; ``tiles_total`` / ``seconds_per_tile`` allow extrapolation.
    """
    plan = plan or NNUNetPlan()
    _check_volume(hu, spacing_mm)
    net = net if net is not None else build_plain_conv_unet(plan)
    cuda = torch.device(device).type == "cuda"
    seconds: dict[str, float] = {}

    def lap(name: str, start: float) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        seconds[name] = now - start
        return now

    with EfficiencyMeter(device=device if cuda else None) as meter:
        t = time.perf_counter()
        image, shape = nnunet_preprocess(hu, spacing_mm, plan)
        t = lap("preprocess", t)
        logits = sliding_window_predict(net, image, plan, mirror_axes=(0, 1, 2) if mirror else (),
                                        device=device, max_tiles=max_tiles, progress=progress)
        t = lap("predict", t)
        labels = logits_to_labels(logits, shape, plan, spacing_mm)
        del logits
        lap("resample_back", t)
    resampled = tuple(image.shape[2:])
    tiles = count_tiles(resampled, plan)
    return BaselineResult(labels=labels, seconds=seconds, total_s=sum(seconds.values()),
                          resampled_shape=resampled, tiles_total=tiles, tiles_run=min(tiles, max_tiles or tiles),
                          memory=meter.to_dict())
