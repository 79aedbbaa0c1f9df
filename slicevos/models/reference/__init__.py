"""Reference module networks: TransUNet, DeepLabV3+ (both conditioned on the slice position)
and the CPS pair. Importing this package registers ``transunet`` and ``deeplabv3plus``."""

from slicevos.models.reference.cps import CPSConfig, CPSPair, build_cps_pair
from slicevos.models.reference.deeplab import DeepLabV3Plus, DeepLabV3PlusParams
from slicevos.models.reference.position import SlicePositionFiLM, relative_position
from slicevos.models.reference.transunet import TransUNet, TransUNetParams

__all__ = [
    "CPSConfig", "CPSPair", "DeepLabV3Plus", "DeepLabV3PlusParams", "SlicePositionFiLM",
    "TransUNet", "TransUNetParams", "build_cps_pair", "relative_position",
]
