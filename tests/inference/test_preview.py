"""Overlay previews: PNG output, colours where the labels are, orientation, physical aspect,
legend of present organs only, uncertainty strip, bounded inputs left untouched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slicevos.errors import InputError
from slicevos.inference.reporting.preview import (
    legend_entries,
    organ_colours,
    render_preview,
    render_preview_panels,
)
from slicevos.io.labels import FLARE22, OBJECTS
from slicevos.preprocessing.windowing import PRESETS, apply_window, window_volume

D, H, W = 12, 20, 16
GREY_HU = 40.0  # centre of the abdomen window -> grey 128


def _case(depth: int = D) -> tuple[np.ndarray, np.ndarray]:
    """Flat grey HU volume; an asymmetric liver block in the upper half and a spleen block."""
    hu = np.full((depth, H, W), GREY_HU, np.float32)
    labels = np.zeros((depth, H, W), np.uint8)
    labels[depth // 2:, 4:12, 2:7] = 1          # liver: superior half, patient right
    labels[depth // 2:depth - 1, 8:14, 10:14] = 3  # spleen: patient left
    for array in (hu, labels):
        array.flags.writeable = False  # inputs must never be written to
    return hu, labels


def _tile(panel: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The single tile of a (1, 1) mosaic: the last ``rows`` rows, first ``cols`` columns."""
    return panel[-rows:, :cols]


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are not grey (overlay); text and CT are grey (r == g == b)."""
    return ~((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]))


def test_png_is_written_atomically_and_matches_the_panels(tmp_path):
    hu, labels = _case()
    out = render_preview(hu, labels, (2.0, 1.0, 1.0), FLARE22, tmp_path / "p.png", tile_px=64)
    panels = render_preview_panels(hu, labels, (2.0, 1.0, 1.0), FLARE22, tile_px=64)
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)[..., ::-1]  # BGR -> RGB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no temporary left
    assert list(panels) == ["axial", "coronal", "sagittal", "legend"]
    assert image.shape[1] == max(p.shape[1] for p in panels.values())
    assert image.shape[0] == sum(p.shape[0] for p in panels.values()) + 4 * 2 * 2
    axial = panels["axial"]
    top = image[2:2 + axial.shape[0], :axial.shape[1]]
    np.testing.assert_array_equal(top, axial)  # also proves the RGB -> BGR order for cv2


def test_overlay_colour_exactly_on_the_labels_axial_and_coronal():
    hu, labels = _case()
    panels = render_preview_panels(hu, labels, (1.0, 1.0, 1.0), FLARE22, tiles=(1, 1),
                                   tile_px=None)
    liver = np.array(FLARE22.by_id(1).color)
    z = int(np.rint((D // 2 + D - 1) / 2))  # middle of the labelled z extent
    axial = _tile(panels["axial"], H, W)
    np.testing.assert_array_equal(_coloured(axial), labels[z] > 0)  # column 0 = patient right
    blended = np.rint(128 * 0.6 + liver * 0.4)
    np.testing.assert_array_equal(axial[6, 4], blended)  # interior: blend
    np.testing.assert_array_equal(axial[4, 4], liver)    # contour: opaque colour
    assert (axial[~_coloured(axial)][:, 0] >= 128).all()  # grey CT or white text only
    y = int(np.rint((4 + 13) / 2))  # labelled rows 4..13 -> middle plane
    coronal = _tile(panels["coronal"], D, W)
    np.testing.assert_array_equal(_coloured(coronal), labels[::-1, y] > 0)  # superior on top
    assert _coloured(coronal[: D // 2]).any() and not _coloured(coronal[D // 2:]).any()


def test_legend_lists_only_present_organs():
    hu, labels = _case()
    panels = render_preview_panels(hu, labels, (1.0, 1.0, 1.0), FLARE22, tile_px=32)
    legend = panels["legend"].reshape(-1, 3)
    colours = organ_colours(FLARE22)
    present = {tuple(c) for c in np.unique(legend, axis=0).tolist()}
    assert colours[1] in present and colours[3] in present
    assert not present & {colours[i] for i in FLARE22.ids if i not in (1, 3)}
    assert [(e.class_id, e.name) for e in legend_entries([0, 3, 1], FLARE22)] == [
        (1, "liver"), (3, "spleen")]
    empty = render_preview_panels(hu, np.zeros_like(labels), (1, 1, 1), FLARE22, tile_px=32)
    assert not _coloured(empty["legend"]).any()


@pytest.mark.parametrize("spacing, factor", [((3.0, 1.0, 1.0), 3), ((1.0, 1.0, 1.0), 1)])
def test_coronal_and_sagittal_follow_the_spacing(spacing, factor):
    hu, labels = _case()
    panels = render_preview_panels(hu, labels, spacing, FLARE22, tiles=(1, 1), tile_px=None)
    title = panels["axial"].shape[0] - H
    assert panels["coronal"].shape[:2] == (title + factor * D, W)
    assert panels["sagittal"].shape[:2] == (title + factor * D, H)
    fitted = render_preview_panels(hu, labels, spacing, FLARE22, tiles=(1, 1), tile_px=60)
    height, width = fitted["coronal"].shape[0] - title, fitted["coronal"].shape[1]
    assert max(height, width) == 60
    assert height / width == pytest.approx(factor * D / W, rel=0.05)


def test_sagittal_columns_use_the_row_spacing():
    hu, labels = _case()
    panels = render_preview_panels(hu, labels, (2.0, 0.5, 1.0), FLARE22, tiles=(1, 1),
                                   tile_px=None)
    title = panels["axial"].shape[0] - round(H * 0.5 / 1.0)
    assert panels["sagittal"].shape[:2] == (title + 4 * D, H)  # dz / dy = 4


def test_one_slice_volume_has_only_the_axial_view():
    hu, labels = _case(depth=1)
    panels = render_preview_panels(hu, labels, (5.0, 1.0, 1.0), FLARE22, tile_px=32)
    assert list(panels) == ["axial", "legend"]


def test_windowed_uint8_input_matches_hu_input():
    hu, labels = _case()
    hu = hu + np.linspace(-200, 300, W, dtype=np.float32)  # a gradient across the columns
    windowed = window_volume(hu)  # (D, 3, H, W), abdomen first
    a = render_preview_panels(hu, labels, (1, 1, 1), FLARE22, tile_px=None)
    b = render_preview_panels(windowed, labels, (1, 1, 1), FLARE22, tile_px=None)
    c = render_preview_panels(apply_window(hu, PRESETS["abdomen"]), labels, (1, 1, 1), FLARE22,
                              tile_px=None)
    for view in a:
        np.testing.assert_array_equal(a[view], b[view])
        np.testing.assert_array_equal(a[view], c[view])


def test_uncertainty_strip_on_the_coronal_view():
    hu, labels = _case()
    values = np.linspace(0.0, 1.0, D)
    values[0] = np.nan  # most inferior slice not processed
    plain = render_preview_panels(hu, labels, (1, 1, 1), FLARE22, tiles=(1, 1), tile_px=None)
    strip = render_preview_panels(hu, labels, (1, 1, 1), FLARE22, tiles=(1, 1), tile_px=None,
                                  uncertainty=values)
    assert strip["coronal"].shape[1] > plain["coronal"].shape[1]
    np.testing.assert_array_equal(strip["axial"], plain["axial"])
    top_colour = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1]
    np.testing.assert_array_equal(strip["coronal"][-D, -1], top_colour)  # superior = max
    np.testing.assert_array_equal(strip["coronal"][-1, -1], (60, 60, 60))  # NaN slice


def test_palette_is_distinct_and_deterministic():
    flare = organ_colours(FLARE22)
    assert flare == {c.id: c.color for c in FLARE22.classes}
    objects = organ_colours(OBJECTS)
    assert len(set(objects.values())) == 255 == len(objects)
    assert objects == organ_colours(OBJECTS)
    assert all(len(set(c)) > 1 for c in objects.values())  # never grey


def test_bad_input(tmp_path):
    hu, labels = _case()
    with pytest.raises(ValueError, match="same"):
        render_preview_panels(hu[:-1], labels, (1, 1, 1), FLARE22)
    with pytest.raises(ValueError, match="views"):
        render_preview_panels(hu, labels, (1, 1, 1), FLARE22, views=("oblique",))
    with pytest.raises(ValueError, match="spacing"):
        render_preview_panels(hu, labels, (0, 1, 1), FLARE22)
    with pytest.raises(InputError, match="png"):
        render_preview(hu, labels, (1, 1, 1), FLARE22, tmp_path / "p.jpg")
    assert not list(tmp_path.iterdir())


def test_real_ct_patient_right_on_the_image_left(real_data):
    from slicevos.io import load_labels, load_volume

    case = real_data / "example_ct_full112"
    volume = load_volume(case / "ct.nii.gz")
    labels, _ = load_labels(case / "label_flare.nii.gz", volume, FLARE22)
    panels = render_preview_panels(volume.hu, labels, volume.spacing, FLARE22, tiles=(1, 1),
                                   tile_px=None, views=("axial", "coronal"))
    colours = organ_colours(FLARE22)

    def mean_column(panel: np.ndarray, class_id: int) -> float:
        return float(np.flatnonzero((panel == colours[class_id]).all(axis=2).any(axis=0)).mean())

    for view in ("axial", "coronal"):  # liver (patient right) left of spleen on screen
        assert mean_column(panels[view], 1) < mean_column(panels[view], 3)
    rows = np.flatnonzero((panels["coronal"] == colours[1]).all(axis=2).any(axis=1))
    below_liver = panels["coronal"].shape[0] - rows.max()
    assert below_liver > rows.min()  # the liver sits in the upper part: superior on top
