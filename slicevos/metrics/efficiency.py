"""Efficiency as FLARE measures it: wall time, peak memory and the area under the GPU-memory
-time curve.

FLARE samples the total used GPU memory (``nvidia-smi`` / NVML) every 0.1 s while a case runs
and integrates memory (MB) x time (s). :class:`EfficiencyMeter` does the same in a background
thread, with NVML when ``pynvml`` (package ``nvidia-ml-py``) is installed, else with
``torch.cuda.memory_reserved`` (this process only); the process RSS is sampled alongside.

torch and pynvml are optional and never imported here when absent; torch is only used if the
caller has already imported it before entering the meter (importing it inside the meter would
add seconds and hundreds of MB to what is measured).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np
import psutil

MB = 1024 * 1024


def cuda_device_index(device: int | str | None) -> int:
    """``None`` / ``"cuda"`` -> 0, ``"cuda:1"`` / ``1`` -> 1."""
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    text = str(device)
    return int(text.split(":", 1)[1]) if ":" in text else 0


def _torch_cuda() -> Any | None:
    """``torch.cuda`` if torch is already imported and CUDA is usable, else None."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda if torch is not None and torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install must not break the measurement
        return None


def _nvml_reader(index: int) -> Callable[[], float] | None:
    """Total used memory (MB, all processes) of the visible GPU ``index`` via NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        target = visible[index].strip() if index < len(visible) and visible[index].strip() else ""
        if target.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(target))
        elif target:
            handle = pynvml.nvmlDeviceGetHandleByUUID(target)
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # not installed, no driver, no such device
        return None
    return lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / MB


def _gpu_reader(index: int) -> Callable[[], float] | None:
    nvml = _nvml_reader(index)
    if nvml is not None:
        return nvml
    cuda = _torch_cuda()
    if cuda is None:
        return None
    return lambda: cuda.memory_reserved(index) / MB


def area_under_curve(times: list[float], values: list[float]) -> float:
    """Trapezoid area under ``values`` over ``times`` (unit x seconds)."""
    if len(times) < 2:
        return 0.0
    t, v = np.asarray(times), np.asarray(values)
    return float(np.sum((v[1:] + v[:-1]) * np.diff(t)) / 2.0)


class EfficiencyMeter:
    """Context manager that measures the block it wraps.

    After the block: ``wall_time_s``; ``peak_rss_mb`` and ``rss_auc_mb_s`` (process RSS, plus
    its children with ``include_children``); ``peak_cuda_mb`` (``torch.cuda.max_memory_allocated``
    during the block); ``peak_gpu_mb`` and ``gpu_memory_auc_mb_s`` (sampled GPU memory, the FLARE
    measure). GPU fields are None without CUDA. Sampled every ``sample_interval_s`` seconds and
    once at entry and exit.

    >>> with EfficiencyMeter() as meter:
    ...     run_case()
    >>> meter.to_dict()
    """

    def __init__(self, sample_interval_s: float = 0.1, device: int | str | None = None,
                 include_children: bool = False) -> None:
        if sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be > 0, got {sample_interval_s}")
        self.sample_interval_s = sample_interval_s
        self.device_index = cuda_device_index(device)
        self.include_children = include_children
        self.wall_time_s: float | None = None
        self.peak_rss_mb: float | None = None
        self.rss_auc_mb_s: float | None = None
        self.peak_cuda_mb: float | None = None
        self.peak_gpu_mb: float | None = None
        self.gpu_memory_auc_mb_s: float | None = None
        self.samples: list[tuple[float, float, float | None]] = []  # (s since start, rss, gpu)
        self._process = psutil.Process()
        self._gpu: Callable[[], float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _rss_mb(self) -> float:
        rss = self._process.memory_info().rss
        if self.include_children:
            for child in self._process.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:  # the child ended between listing and reading
                    pass
        return rss / MB

    def _sample(self) -> None:
        gpu = self._gpu() if self._gpu is not None else None
        self.samples.append((time.perf_counter() - self._start, self._rss_mb(), gpu))

    def _run(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            self._sample()

    def __enter__(self) -> EfficiencyMeter:
        self._gpu = _gpu_reader(self.device_index)
        cuda = _torch_cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats(self.device_index)
        self.samples = []
        self._stop.clear()
        self._start = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="efficiency-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.wall_time_s = time.perf_counter() - self._start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        times = [s[0] for s in self.samples]
        rss = [s[1] for s in self.samples]
        self.peak_rss_mb = max(rss)
        self.rss_auc_mb_s = area_under_curve(times, rss)
        if self._gpu is not None:
            gpu = [s[2] for s in self.samples]
            self.peak_gpu_mb = max(gpu)
            self.gpu_memory_auc_mb_s = area_under_curve(times, gpu)
        cuda = _torch_cuda()
        if cuda is not None:
            cuda.synchronize(self.device_index)
            self.peak_cuda_mb = cuda.max_memory_allocated(self.device_index) / MB

    def to_dict(self) -> dict[str, float | None]:
        return {
            "wall_time_s": self.wall_time_s,
            "peak_rss_mb": self.peak_rss_mb,
            "rss_auc_mb_s": self.rss_auc_mb_s,
            "peak_cuda_mb": self.peak_cuda_mb,
            "peak_gpu_mb": self.peak_gpu_mb,
            "gpu_memory_auc_mb_s": self.gpu_memory_auc_mb_s,
        }
