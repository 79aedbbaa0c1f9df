"""Inference: segmenters, key-slice selection, (later) propagation sessions and the volume
pipeline. Never imports ``slicevos.training``."""
