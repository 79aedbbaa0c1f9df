"""The nnU-Net 3d_fullres timing baseline: tile positions, Gaussian weights, sliding window,
preprocessing and the timed run, on a tiny plan."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from slicevos.benchmarks.nnunet_baseline import (
    NNUNetPlan,
    build_plain_conv_unet,
    count_tiles,
    gaussian_importance_map,
    logits_to_labels,
    nnunet_preprocess,
    run_nnunet_baseline,
    sliding_window_predict,
    tile_starts,
)
from slicevos.errors import InputError

TINY = NNUNetPlan(patch_size=(8, 16, 16), features=(4, 8, 16),
                  strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                  kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)), num_classes=5)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    pytest.importorskip("dynamic_network_architectures")
    torch.manual_seed(0)
    return build_plain_conv_unet(TINY)


def test_tile_starts_follow_nnunet_formula() -> None:
    assert tile_starts(110, 64, 0.5) == [0, 23, 46]  # the example in nnU-Net's source
    assert tile_starts(64, 64, 0.5) == [0]
    assert tile_starts(512, 160, 0.5) == [0, 70, 141, 211, 282, 352]
    for size in range(16, 80):
        starts = tile_starts(size, 16, 0.5)
        assert starts[0] == 0 and starts[-1] == size - 16
        assert all(0 < b - a <= 8 for a, b in zip(starts, starts[1:], strict=False))
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + 16] = True
        assert covered.all()
    with pytest.raises(ValueError):
        tile_starts(10, 16, 0.5)


def test_gaussian_map_peaks_at_centre_with_sigma_an_eighth_of_the_patch() -> None:
    g = gaussian_importance_map((16, 32, 24)).numpy()
    assert g.shape == (16, 32, 24) and g.min() > 0
    assert np.unravel_index(g.argmax(), g.shape) == (8, 16, 12) and g.max() == pytest.approx(1.0)
    # one sigma (32 / 8 = 4 voxels) from the centre the weight drops to exp(-1/2)
    assert g[8, 20, 12] == pytest.approx(np.exp(-0.5), rel=1e-3)
    assert np.all(np.diff(g[8, 16:, 12]) < 0)


def test_plan_checks_patch_against_strides() -> None:
    NNUNetPlan()  # issue 5's plan is consistent: total stride (8, 32, 32) divides (96, 160, 160)
    with pytest.raises(InputError, match="not divisible"):
        NNUNetPlan(patch_size=(100, 160, 160))
    with pytest.raises(InputError, match="one of each per stage"):
        NNUNetPlan(features=(32, 64))


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures.unet", None)
    with pytest.raises(InputError, match=r'pip install -e "\.\[bench\]"'):
        build_plain_conv_unet(TINY)


def test_preprocess_normalises_and_resamples_slices_by_nearest() -> None:
    # 6 slices of 5 mm, each constant: z goes to 12 slices of 2.5 mm by nearest slice (order 0)
    hu = np.repeat(np.array([-2000, -100, 0, 50, 100, 5000], np.float32), 20 * 20).reshape(6, 20, 20)
    image, shape = nnunet_preprocess(hu, (5.0, 0.8, 0.8), TINY)
    assert shape == (6, 20, 20) and tuple(image.shape) == (1, 1, 12, 20, 20)
    expected = (np.clip(hu[:, 0, 0], *TINY.clip_hu) - TINY.mean_hu) / TINY.std_hu
    out = image[0, 0].numpy()
    np.testing.assert_allclose(out[:, 10, 10], np.repeat(expected, 2), rtol=1e-5, atol=1e-5)
    image, _ = nnunet_preprocess(hu, (2.5, 0.4, 1.6), TINY)
    assert tuple(image.shape[2:]) == (6, 10, 40)
    with pytest.raises(InputError):
        nnunet_preprocess(hu[0], (2.5, 0.8, 0.8), TINY)


def test_logits_to_labels_argmax_at_the_original_shape() -> None:
    logits = torch.randn(TINY.num_classes, 4, 6, 6)
    before = logits.clone()
    labels = logits_to_labels(logits, (4, 6, 6), TINY, TINY.spacing)
    assert labels.dtype == np.uint8 and np.array_equal(labels, logits.argmax(0).numpy())
    assert torch.equal(logits, before)  # the caller's logits are left alone
    ramp = torch.zeros(TINY.num_classes, 4, 6, 6)
    ramp[3] = 1.0
    ramp[1, :, :, 3:] = 2.0  # class 1 wins on the right half
    labels = logits_to_labels(ramp, (2, 12, 12), TINY, (5.0, 0.4, 0.4))
    assert labels.shape == (2, 12, 12)
    assert (labels[:, :, :5] == 3).all() and (labels[:, :, 7:] == 1).all()


def test_sliding_window_normalises_weights_over_every_voxel(net: torch.nn.Module) -> None:
    """A network whose output is a constant per class (last conv: zero weights, bias b) must
    come out as exactly b everywhere: a voxel no tile covered, or a wrong division by the summed
    Gaussian weights, would show."""
    const = build_plain_conv_unet(TINY)
    bias = torch.arange(1.0, TINY.num_classes + 1)
    with torch.no_grad():
        const.decoder.seg_layers[-1].weight.zero_()
        const.decoder.seg_layers[-1].bias.copy_(bias)
    for shape in ((21, 37, 30), (5, 12, 40)):  # several tiles each axis; smaller than the patch
        logits = sliding_window_predict(const, torch.randn(1, 1, *shape), TINY)
        assert tuple(logits.shape) == (TINY.num_classes, *shape)
        torch.testing.assert_close(logits, bias[:, None, None, None].expand_as(logits))


def test_single_tile_is_the_network_and_mirroring_is_flip_equivariant(net: torch.nn.Module) -> None:
    x = torch.randn(1, 1, *TINY.patch_size)
    with torch.inference_mode():
        direct = net(x)[0]
    torch.testing.assert_close(sliding_window_predict(net, x, TINY), direct, rtol=1e-4, atol=1e-5)
    axes = (0, 1, 2)
    tta = sliding_window_predict(net, x, TINY, mirror_axes=axes)
    assert not torch.allclose(tta, direct, atol=1e-3)
    flipped = sliding_window_predict(net, torch.flip(x, (2, 3, 4)), TINY, mirror_axes=axes)
    torch.testing.assert_close(torch.flip(flipped, (1, 2, 3)), tta, rtol=1e-4, atol=1e-5)


def test_run_baseline_returns_labels_in_input_geometry(net: torch.nn.Module) -> None:
    hu = np.random.default_rng(0).uniform(-1000, 1000, (10, 30, 26)).astype(np.float32)
    result = run_nnunet_baseline(hu, (3.0, 0.7, 0.9), TINY, net=net)
    assert result.labels.shape == hu.shape and result.labels.dtype == np.uint8
    assert result.labels.max() < TINY.num_classes
    assert result.resampled_shape == (12, 26, 29)
    assert result.tiles_run == result.tiles_total == count_tiles((12, 26, 29), TINY) == 2 * 3 * 3
    assert set(result.seconds) == {"preprocess", "predict", "resample_back"}
    assert result.total_s == pytest.approx(sum(result.seconds.values()))
    assert result.estimated_total_s == pytest.approx(result.total_s)
    assert result.memory["peak_rss_mb"] > 0
    partial = run_nnunet_baseline(hu, (3.0, 0.7, 0.9), TINY, net=net, mirror=True, max_tiles=2)
    assert partial.tiles_run == 2 and partial.labels.shape == hu.shape
    assert partial.estimated_total_s > partial.total_s


def test_benchmark_rows(net: torch.nn.Module) -> None:
    from slicevos.benchmarks.nnunet_benchmark import benchmark_baseline, phantom_spacing

    assert phantom_spacing(100, 512) == (3.8, 0.78125, 0.78125)  # the phantom spans 380 mm in z
    rows = benchmark_baseline(depths=(6, 9), size=32, spacing=(2.5, 0.8, 0.8), plan=TINY,
                              max_tiles_mirror=1)
    assert [(r["shape"][0], r["tta"] != "none") for r in rows] == [(6, False), (6, True),
                                                                    (9, False), (9, True)]
    for row in rows:
        assert row["extrapolated"] == (row["tiles_run"] < row["tiles_total"])
        assert row["estimated_total_s"] >= row["total_s"] > 0 and row["peak_rss_mb"] > 0
    assert rows[1]["extrapolated"] and rows[1]["tiles_run"] == 1
