"""Options of the whole-volume pipeline (``slicevos-infer``), loaded from ``configs/inference/``.

The networks themselves come from the checkpoints (each carries its own config); this file only
says how they are run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slicevos.config import check_fields
from slicevos.inference.engines import ENGINES, FusionWeights
from slicevos.inference.engines.flow.engine import FlowConfig
from slicevos.inference.engines.stcn.slice_scale import NETWORK_UPSAMPLE_BELOW
from slicevos.inference.reference.segmenter import BACKENDS

AMP_CHOICES = ("none", "bf16", "fp16")
TTA_CHOICES = ("none", "flip_lr", "flip_lr_ud")
KEY_MODES = ("per_organ", "sampled")


@dataclass(frozen=True)
class InferenceConfig:
    """How ``VolumePipeline`` runs.

    ``propagator``: the engine that fills the volume from the key slices (flow: optical flow,
    no checkpoint; stcn: the trained network; guided: a flow-guided network correcting the
    flow engine's proposal; fused: a network and flow, mixed by ``fusion``); ``flow``: the
    flow engine's options (``slicevos.inference.engines.flow.engine.FlowConfig``). ``key_mode`` (automatic
    mode): ``per_organ`` keys only the slice where each organ is largest, ``sampled`` makes
    every slice the reference segmented a key.

    Reference stage: ``key_stride`` samples one slice in that many for key-slice selection;
    an organ needs ``min_key_area`` pixels on its key slice; ``tta`` flips averaged with the
    plain prediction ("flip_lr": left-right; "flip_lr_ud": + up-down); ``batch_size`` slices per
    reference call; ``backend`` runs the reference pair with PyTorch (torch) or onnxruntime
    (onnx, CPU; ``slicevos.inference.onnx``); auto: onnx on the CPU when the onnx extra is
    installed, else torch. Propagation: a pass stores a frame every ``memory_every`` slices, at most
    ``max_memory_frames`` of them besides the keys; ``feature_cache_slices`` bounds the per-slice
    key-feature cache (None = every slice; bounded by default so 1000-slice volumes fit);
    ``features_on_cpu`` keeps memory features in host RAM (GPU runs of long volumes);
    ``network_upsample_below``: the network (stcn, guided, fused) runs slices whose longer side
    is under that many pixels on a grid up to twice as fine (0 = never).
    Localizer: slices with abdomen probability >= ``localizer_threshold``, widened by
    ``localizer_margin_slices``; ``localizer_stride`` classifies every n-th slice only.
    ``component_rules``: apply the label schema's per-class 3D component rules
    (``slicevos.inference.postprocess``; never removes drawn parts). ``amp``: bf16/fp16
    autocast on CUDA ("none" on CPU).
    """

    propagator: str = "flow"
    key_mode: str = "sampled"
    flow: FlowConfig = field(default_factory=FlowConfig)
    fusion: FusionWeights = field(default_factory=FusionWeights)
    key_stride: int = 8
    min_key_area: int = 20
    tta: str = "none"
    batch_size: int = 8
    backend: str = "auto"
    memory_every: int = 5
    max_memory_frames: int = 8
    feature_cache_slices: int | None = 64
    features_on_cpu: bool = False
    network_upsample_below: int = NETWORK_UPSAMPLE_BELOW
    localizer_threshold: float = 0.5
    localizer_margin_slices: int = 3
    localizer_stride: int = 1
    component_rules: bool = True
    amp: str = "none"

    def __post_init__(self) -> None:
        checks = {
            "propagator": (self.propagator in ENGINES, f"one of {ENGINES}"),
            "key_mode": (self.key_mode in KEY_MODES, f"one of {KEY_MODES}"),
            "key_stride": (self.key_stride >= 1, "an integer >= 1"),
            "min_key_area": (self.min_key_area >= 1, "an integer >= 1"),
            "tta": (self.tta in TTA_CHOICES, f"one of {TTA_CHOICES}"),
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "backend": (self.backend in BACKENDS, f"one of {BACKENDS}"),
            "memory_every": (self.memory_every >= 1, "an integer >= 1"),
            "max_memory_frames": (self.max_memory_frames >= 0, "an integer >= 0"),
            "network_upsample_below": (self.network_upsample_below >= 0, "an integer >= 0"),
            "feature_cache_slices": (self.feature_cache_slices is None
                                     or self.feature_cache_slices >= 1, "null or >= 1"),
            "localizer_threshold": (0 < self.localizer_threshold < 1, "a probability in (0, 1)"),
            "localizer_margin_slices": (self.localizer_margin_slices >= 0, "an integer >= 0"),
            "localizer_stride": (self.localizer_stride >= 1, "an integer >= 1"),
            "amp": (self.amp in AMP_CHOICES, f"one of {AMP_CHOICES}"),
        }
        check_fields(self, "inference", checks)
