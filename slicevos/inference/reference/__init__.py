"""The reference side of inference: ``segmenter`` (the CPS pair over slices), ``tta`` (flip
test-time augmentation), ``key_slices`` (which sampled slices become keys), ``ensemble``
(several reference checkpoints for pseudo-labels)."""
