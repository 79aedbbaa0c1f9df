from __future__ import annotations

import numpy as np
import pytest

from slicevos.config import load_config
from slicevos.preprocessing import PRESETS, Window, apply_window, resolve_windows, window_volume
from slicevos.preprocessing.config import WindowingConfig


def test_window_maps_level_and_edges():
    w = Window(40, 400)
    hu = np.array([-1000, -160, 40, 240, 3000], np.float32)
    np.testing.assert_array_equal(apply_window(hu, w), [0, 0, 128, 255, 255])


def test_window_volume_shape_dtype_and_channels():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 2000, size=(4, 16, 12)).astype(np.float32)
    out = window_volume(hu)
    assert out.shape == (4, 3, 16, 12) and out.dtype == np.uint8
    for c, name in enumerate(("abdomen", "chest", "spine")):
        np.testing.assert_array_equal(out[:, c], apply_window(hu, PRESETS[name]))
    single = window_volume(hu[0], ["abdomen"])
    assert single.shape == (1, 16, 12)


def test_windows_from_mappings_and_errors():
    assert resolve_windows([{"level": 50, "width": 350}, "spine"])[0] == Window(50, 350)
    with pytest.raises(ValueError, match="unknown window preset"):
        resolve_windows(["lung_typo"])
    with pytest.raises(ValueError, match="width"):
        Window(0, 0)


def test_windowing_config_from_yaml(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("windows:\n  - abdomen\n  - {level: -600, width: 1500}\n")
    cfg = load_config(path, WindowingConfig)
    assert cfg.resolved() == (PRESETS["abdomen"], Window(-600, 1500))
    default = load_config("configs/windowing/default.yaml", WindowingConfig)
    assert default.resolved() == tuple(PRESETS[n] for n in ("abdomen", "chest", "spine"))
