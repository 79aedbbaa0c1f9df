"""Configuration of the STCN propagation network (defaults = the paper's network).

YAML form, through the model registry (``num_classes`` and ``in_channels`` come from
``build_model``, the rest from ``params``)::

    name: stcn
    position_encoding: false   # STCN has no slice-position input; the flag is ignored
    params: {key_backbone: resnet18, decoder_channels: [128, 64, 32], object_mode: per_object}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from slicevos.errors import InputError

ObjectMode = Literal["per_object", "joint"]


@dataclass(frozen=True)
class PropagationModelConfig:
    """Sizes and modes of :class:`~slicevos.models.propagation.network.PropagationNet`.

    ``key_backbone`` / ``value_backbone``: timm model names (``features_only``, random init);
    both must offer feature maps at strides 4, 8 and 16 (key) / 16 (value); later stages are cut
    off. ``*_backbone_kwargs`` go to ``timm.create_model``. ``key_dim``: channels of the
    stride-16 key; ``value_dim``: channels of a memory value (and of the readout).
    ``value_fuser_blocks``: residual blocks after fusing the value backbone with the key
    encoder's f16. ``decoder_channels``: widths after the stride-16 compression, the stride-8
    and the stride-4 upsampling blocks. ``object_mode``: "per_object" (one binary value/logit
    map per object, soft aggregation across objects) or "joint" (one value map per slice from
    the one-hot mask of ``num_classes`` classes, class logits out). ``top_k``: memory entries
    kept per query position at inference (None: full softmax, used in training).
    ``prior_input``: the flow-guided variant. The decoder is also given, for the slice it
    segments, a prior in the shape of its output (per object, or per class in joint mode):
    signed distances in pixels (> 0 inside), as the flow engine warps them. It becomes the
    logits ``clamp(prior / prior_temperature, ±prior_logit_clip)``, which the decoder sees
    (at strides 16 and 4) and corrects: its output is added to them, from a zero-initialised
    last layer, so the untrained network returns the prior itself. ``prior_correction_limit``
    (logits; None = unbounded) bounds that correction smoothly (``limit * tanh(c / limit)``):
    the network can then move boundaries and end organs whose prior is weak, but cannot
    erase an organ the prior is deep inside.
    """

    key_backbone: str = "resnet50"
    value_backbone: str = "resnet18"
    key_backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    value_backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    key_dim: int = 64
    value_dim: int = 512
    value_fuser_blocks: int = 2
    decoder_channels: tuple[int, int, int] = (512, 256, 256)
    object_mode: ObjectMode = "per_object"
    num_classes: int = 2
    in_channels: int = 3
    top_k: int | None = 20
    prior_input: bool = False
    prior_temperature: float = 2.0
    prior_logit_clip: float = 6.0
    prior_correction_limit: float | None = None

    def __post_init__(self) -> None:
        if self.object_mode not in ("per_object", "joint"):
            raise InputError(None, f"object_mode must be 'per_object' or 'joint', got "
                             f"{self.object_mode!r}", "set params.object_mode")
        if self.object_mode == "joint" and self.num_classes < 2:
            raise InputError(None, f"joint mode needs num_classes >= 2 (background included), "
                             f"got {self.num_classes}", "pass schema.num_classes")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(None, f"top_k must be >= 1 or None, got {self.top_k}",
                             "use 20 (paper) or null for the full softmax")
        if self.prior_correction_limit is not None and self.prior_correction_limit <= 0:
            raise InputError(None, f"prior_correction_limit must be > 0 or null, got "
                             f"{self.prior_correction_limit}", "use e.g. 3.0, or null")
        if self.prior_temperature <= 0 or self.prior_logit_clip <= 0:
            raise InputError(None, f"prior_temperature and prior_logit_clip must be > 0, got "
                             f"{self.prior_temperature}, {self.prior_logit_clip}",
                             "use the defaults 2.0 and 6.0")
        if len(self.decoder_channels) != 3:
            raise InputError(None, f"decoder_channels needs 3 widths (strides 16, 8, 4), got "
                             f"{tuple(self.decoder_channels)}", "e.g. [512, 256, 256]")

    @property
    def mask_channels(self) -> int:
        """Mask channels the value encoder receives besides the image: this object + the
        others (per_object) or the one-hot classes (joint)."""
        return 2 if self.object_mode == "per_object" else self.num_classes
