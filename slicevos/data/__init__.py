"""Data: dataset folders, cached slice stores, slice / clip datasets, augmentation and the
synthetic CT phantom generator (``slicevos.data.phantom``)."""
