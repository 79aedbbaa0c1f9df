"""Fixtures of the labeler tests: a tiny phantom scan written as NIfTI (LPS, as the phantom
writes it, and RAS), its true labels, and a labeler with a test client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the labeler needs starlette (pip install -e '.[label]')")

from starlette.testclient import TestClient  # noqa: E402

from slicevos.io.labels import FLARE22  # noqa: E402
from slicevos.io.nifti import save_labels, save_volume  # noqa: E402
from slicevos.labeler.server import TOKEN_HEADER, create_app  # noqa: E402
from slicevos.labeler.state import Labeler, open_labeler  # noqa: E402
from slicevos.phantom import PhantomConfig, make_phantom  # noqa: E402

from .helpers import SHAPE, TOKEN  # noqa: E402


@dataclass(frozen=True)
class Scan:
    ct: Path
    truth: Path
    labels: np.ndarray  # canonical (D, H, W) true labels


@pytest.fixture(scope="session")
def scans(tmp_path_factory) -> dict[str, Scan]:
    """The phantom as an LPS file (the phantom's own layout) and as a RAS file."""
    folder = tmp_path_factory.mktemp("labeler_scans")
    phantom = make_phantom(3, PhantomConfig(shape=SHAPE))
    volume = phantom.to_volume()
    lps = Scan(folder / "lps_ct.nii.gz", folder / "lps_truth.nii.gz", phantom.labels)
    save_volume(np.rint(volume.hu).astype(np.int16), volume.geometry, lps.ct)
    save_labels(phantom.labels, volume.geometry, lps.truth)
    ras = Scan(folder / "ras_ct.nii.gz", folder / "ras_truth.nii.gz", phantom.labels)
    for src, dst in ((lps.ct, ras.ct), (lps.truth, ras.truth)):
        nib.save(nib.as_closest_canonical(nib.load(src)), dst)
    return {"lps": lps, "ras": ras}


@pytest.fixture
def open_client(tmp_path) -> Iterator[Callable[..., tuple[Labeler, TestClient]]]:
    """``open_client(scan_path, out=None, **open_labeler kwargs)`` -> (labeler, client)."""
    made: list[Labeler] = []

    def make(scan: Path, out: Path | None = None, **kwargs) -> tuple[Labeler, TestClient]:
        labeler = open_labeler(scan, out or tmp_path / "out" / "labels.nii.gz", FLARE22,
                               **kwargs)
        made.append(labeler)
        return labeler, TestClient(create_app(labeler, TOKEN), headers={TOKEN_HEADER: TOKEN})

    yield make
    for labeler in made:
        labeler.stop()
