"""Inference: from a CT and its keys (drawn, or found by the reference pair) to a label volume.
Never imports ``slicevos.training``.

- ``pipeline.VolumePipeline``: windowing -> [localizer] -> key slices -> propagation ->
  component rules (``postprocess``); ``user_keys`` reads drawn keys, ``config`` its options.
- ``session.PropagationSession``: the engine-agnostic propagation of key masks through a
  volume, both directions fused; ``box_scores`` the sparse scores it fuses.
- ``engines``: the propagators behind the session (``build_propagator``: flow, stcn, guided,
  fused), one subpackage or module each.
- ``reference``: the CPS pair over slices, TTA, key-slice selection, ensembles.
- ``reporting``: the per-case report, previews, uncertainty.
- ``localizer``, ``checkpoints`` (loading with the training windows), ``validation``.
"""
