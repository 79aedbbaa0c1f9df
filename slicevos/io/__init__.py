"""Volume I/O: NIfTI and DICOM in, canonical (D, H, W) HU arrays, labels back in the input's
own geometry. See ``slicevos.io.volume`` for the axis and unit contract."""

from slicevos.io.labels import FLARE22, FLARE23, LabelClass, LabelMapping, LabelSchema, get_schema
from slicevos.io.loader import load_volume
from slicevos.io.nifti import load_labels, save_labels
from slicevos.io.volume import CANONICAL_AXCODES, Geometry, Volume

__all__ = [
    "CANONICAL_AXCODES", "FLARE22", "FLARE23", "Geometry", "LabelClass", "LabelMapping",
    "LabelSchema", "Volume", "get_schema", "load_labels", "load_volume", "save_labels",
]
