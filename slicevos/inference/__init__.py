"""Inference: slice segmenters, key-slice selection, validation on cached volumes, and the
propagation session (memory bank, bidirectional fusion). Never imports ``slicevos.training``.

- ``segmenter.ReferenceSegmenter`` (``.from_checkpoint``): CPS pair over uint8 slices.
- ``key_slices.select_key_slices``: per organ, the sampled slice where it is largest.
- ``propagation.Propagator`` -> ``PropagationSession`` (``add_mask``, ``propagate``, ``run``).
"""
