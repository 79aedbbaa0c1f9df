from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from slicevos.cli.convert_labels import main as convert_main
from slicevos.config import config_to_dict, from_dict, load_config
from slicevos.errors import InputError
from slicevos.io import FLARE22, FLARE23, LabelMapping, get_schema, load_labels

MAPPING = "configs/labels/totalseg_v2_to_flare.yaml"


def test_flare_schemas():
    assert FLARE22.num_classes == 14 and FLARE23.num_classes == 15
    assert FLARE22.by_id(5).gt_slices_only and not FLARE22.by_id(1).gt_slices_only
    tolerances = {c.name: c.nsd_tolerance_mm for c in FLARE23.classes}
    assert tolerances["duodenum"] == 7 and tolerances["tumor"] == 2 and tolerances["liver"] == 5
    assert get_schema("FLARE23") is FLARE23
    with pytest.raises(InputError, match="unknown label schema"):
        get_schema("flare99")


def test_mapping_applies_and_drops_unlisted():
    m = LabelMapping.from_yaml(MAPPING)
    src = np.array([[0, 1, 5, 52, 63, 99]], np.uint8)
    np.testing.assert_array_equal(m.apply(src), [[0, 3, 1, 5, 6, 0]])


def test_bad_mapping_file(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("target: flare22\nclasses:\n  - {source_id: 1, target: not_an_organ}\n")
    with pytest.raises(InputError) as err:
        LabelMapping.from_yaml(bad)
    assert str(bad) in str(err.value) and "not_an_organ" in str(err.value)


@pytest.mark.real
def test_convert_totalseg_equals_flare_labels(real_data, tmp_path):
    case = real_data / "example_ct_sm30"
    out = tmp_path / "converted.nii.gz"
    assert convert_main([str(case / "label_totalseg.nii.gz"), str(out), "--mapping", MAPPING]) == 0
    converted, geom = load_labels(out)
    expected, egeom = load_labels(case / "label_flare.nii.gz")
    np.testing.assert_array_equal(converted, expected)
    assert geom.same_grid(egeom)
    assert (tmp_path / "converted.json").exists()
    # refuses to overwrite without --overwrite, and never writes onto its input
    assert convert_main([str(case / "label_totalseg.nii.gz"), str(out), "--mapping", MAPPING]) == 2
    assert convert_main([str(out), str(out), "--mapping", MAPPING, "--overwrite"]) == 2


@dataclass(frozen=True)
class Inner:
    size: int = 64
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    shape: tuple[int, int] = (1, 2)
    inner: Inner = field(default_factory=Inner)


def test_config_roundtrip_and_unknown_keys(tmp_path):
    cfg = from_dict(Outer, {"name": "y", "shape": [3, 4], "inner": {"size": 32, "scale": 2}})
    assert cfg == Outer("y", (3, 4), Inner(32, 2.0)) and isinstance(cfg.inner.scale, float)
    assert config_to_dict(cfg) == {"name": "y", "shape": [3, 4], "inner": {"size": 32, "scale": 2.0}}
    path = tmp_path / "c.yaml"
    path.write_text("name: z\ninner:\n  sise: 3\n")
    with pytest.raises(InputError) as err:
        load_config(path, Outer)
    assert "sise" in str(err.value) and str(path) in str(err.value)
