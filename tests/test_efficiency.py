"""EfficiencyMeter: wall time, sampled RSS, GPU fields without CUDA."""

from __future__ import annotations

import time

import numpy as np
import pytest

from slicevos.metrics.efficiency import EfficiencyMeter, area_under_curve, cuda_device_index


def test_wall_time_of_a_sleep():
    with EfficiencyMeter(sample_interval_s=0.05) as meter:
        time.sleep(0.3)
    assert 0.29 <= meter.wall_time_s < 0.6
    assert len(meter.samples) >= 4  # entry, exit and the thread's samples
    times = [s[0] for s in meter.samples]
    assert times == sorted(times)


def test_peak_rss_rises_with_a_big_array():
    size_mb = 200
    with EfficiencyMeter(sample_interval_s=0.02) as idle:
        time.sleep(0.1)
    with EfficiencyMeter(sample_interval_s=0.02) as busy:
        array = np.ones(size_mb * 1024 * 1024 // 8)  # touched pages count in RSS
        time.sleep(0.15)
        del array
    assert busy.peak_rss_mb - idle.peak_rss_mb > 0.8 * size_mb
    baseline = busy.samples[0][1]
    assert busy.rss_auc_mb_s > baseline * busy.wall_time_s  # the array adds area


def test_gpu_fields_are_none_without_cuda():
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present; this test covers machines without it")
    except ImportError:
        pass
    with EfficiencyMeter() as meter:
        pass
    result = meter.to_dict()
    if result["peak_gpu_mb"] is not None:
        pytest.skip("NVML reports a GPU on this machine")
    assert result["peak_cuda_mb"] is None
    assert result["gpu_memory_auc_mb_s"] is None
    assert set(result) == {"wall_time_s", "peak_rss_mb", "rss_auc_mb_s", "peak_cuda_mb",
                           "peak_gpu_mb", "gpu_memory_auc_mb_s"}
    assert result["peak_rss_mb"] > 10


def test_auc_is_trapezoid_in_mb_seconds():
    assert area_under_curve([0.0, 0.1, 0.2, 0.4], [100.0, 100.0, 200.0, 200.0]) == pytest.approx(
        10 + 15 + 40)
    assert area_under_curve([0.0], [5.0]) == 0.0


@pytest.mark.parametrize("device, index", [(None, 0), ("cuda", 0), ("cuda:2", 2), (1, 1)])
def test_device_index(device, index):
    assert cuda_device_index(device) == index


def test_bad_interval_raises():
    with pytest.raises(ValueError, match="sample_interval_s"):
        EfficiencyMeter(sample_interval_s=0)
