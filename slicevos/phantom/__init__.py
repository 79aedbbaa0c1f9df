"""Synthetic abdominal CT phantoms with FLARE labels: what the demo, the tests, the benchmarks
and the rounds run on before (or instead of) real CT. The entry points:

::

    from slicevos.phantom import PhantomConfig, make_phantom, write_phantom_dataset
    phantom = make_phantom(seed, PhantomConfig(shape=(64, 128, 128)))   # hu, labels, geometry
    write_phantom_dataset("phantoms", n_labeled=4, n_unlabeled=8)        # FLARE folder layout

Inside: ``generator`` (config, the phantom, ``make_phantom``), ``organs`` and ``anatomy``
(the random anatomy in millimetres), ``shapes`` and ``fields`` (geometry and smooth random
fields), ``render`` (sampling on the grid), ``dataset`` (writing a dataset folder). It
depends on ``io`` and ``config`` only; ``data`` and everything above may use it.
"""

from slicevos.phantom.dataset import write_phantom_dataset
from slicevos.phantom.generator import (
    DEFAULT_ORGAN_HU,
    TUMOR_ID,
    Phantom,
    PhantomConfig,
    TumorInfo,
    make_phantom,
)

__all__ = ["DEFAULT_ORGAN_HU", "TUMOR_ID", "Phantom", "PhantomConfig", "TumorInfo",
           "make_phantom", "write_phantom_dataset"]
