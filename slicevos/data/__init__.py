"""Data: dataset folders, cached slice stores, slice / clip datasets and augmentation. The
phantom generator is a stage of its own: ``slicevos.phantom``."""
