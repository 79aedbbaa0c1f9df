"""Key and value encoders of the STCN propagation network (timm backbones, random init).

Per-object tensors are (B, O, C, h, w); they run through convolutions flattened to (B*O, ...).
Features shared by all objects of a slice (the key encoder's) are convolved once per slice
and broadcast over objects (:class:`FusionBlock`), never repeated O times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from slicevos.errors import InputError


def timm_features(name: str, strides: Sequence[int], in_chans: int,
                  kwargs: dict[str, Any]) -> tuple[nn.Module, list[int]]:
    """timm backbone ``name`` (``features_only``, ``pretrained=False``) returning the feature
    maps at ``strides`` (in that order). timm's ``feature_cls="getter"`` prunes the stages after
    the last one, so no unused parameters are computed or kept. Returns (module, channels)."""
    with torch.device("meta"):  # probe the feature strides without allocating weights
        probe = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    reductions = list(probe.feature_info.reduction())
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise InputError(None, f"backbone {name!r} has feature strides {tuple(reductions)}, "
                         f"needs strides {tuple(strides)}",
                         "pick a timm backbone with stride-4/8/16 stages (resnet*, mobilenetv3*)")
    indices = tuple(reductions.index(s) for s in strides)
    model = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans,
                              out_indices=indices, feature_cls="getter", **kwargs)
    return model, list(model.feature_info.channels())


class ResBlock(nn.Module):
    """Pre-activation residual block (relu-conv3x3-relu-conv3x3, 1x1 skip when widths differ),
    no normalisation (STCN's decoder block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """:class:`ResBlock` on ``concat(x, shared)`` for per-object ``x`` (B, O, Cx, h, w) and
    per-slice ``shared`` (B, Cs, h, w) -> (B, O, out, h, w).

    The first convolution and the skip of the concatenation are split into an ``x`` part and a
    ``shared`` part (the same function: a convolution is linear in its input channels), so the
    shared features are convolved once per slice instead of once per object.
    """

    def __init__(self, object_channels: int, shared_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1_object = nn.Conv2d(object_channels, out_channels, 3, padding=1)
        self.conv1_shared = nn.Conv2d(shared_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip_object = nn.Conv2d(object_channels, out_channels, 1)
        self.skip_shared = nn.Conv2d(shared_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        batch, objects = x.shape[:2]
        flat = x.flatten(0, 1)

        def per_object(y: torch.Tensor) -> torch.Tensor:
            return y.view(batch, objects, *y.shape[1:])

        hidden = (per_object(self.conv1_object(F.relu(flat)))
                  + self.conv1_shared(F.relu(shared)).unsqueeze(1))
        residual = per_object(self.conv2(F.relu(hidden.flatten(0, 1))))
        skip = per_object(self.skip_object(flat)) + self.skip_shared(shared).unsqueeze(1)
        return skip + residual


@dataclass
class KeyFeatures:
    """Output of ``PropagationNet.encode_key`` for B slices of size H x W: ``key``
    (B, key_dim, H/16, W/16) and the key encoder's skips ``f16`` (B, C16, H/16, W/16),
    ``f8`` (B, C8, H/8, W/8), ``f4`` (B, C4, H/4, W/4)."""

    key: torch.Tensor
    f16: torch.Tensor
    f8: torch.Tensor
    f4: torch.Tensor

    def index(self, item: int | slice | torch.Tensor) -> KeyFeatures:
        """The features of a subset of the batch (``features.index(slice(0, 1))``)."""
        return KeyFeatures(self.key[item], self.f16[item], self.f8[item], self.f4[item])


class KeyEncoder(nn.Module):
    """timm backbone at strides 4, 8, 16 + a 3x3 projection of the stride-16 map to the key."""

    def __init__(self, backbone: str, in_channels: int, key_dim: int,
                 backbone_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.backbone, self.channels = timm_features(backbone, (4, 8, 16), in_channels,
                                                     backbone_kwargs)
        self.key_proj = nn.Conv2d(self.channels[2], key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)  # STCN: spread keys at the start
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, images: torch.Tensor) -> KeyFeatures:
        f4, f8, f16 = self.backbone(images)
        return KeyFeatures(self.key_proj(f16), f16, f8, f4)


class ValueEncoder(nn.Module):
    """timm backbone (stride 16) on image + mask channels, fused with the key encoder's f16
    into ``value_dim`` channels by ``fuser_blocks`` residual blocks."""

    def __init__(self, backbone: str, in_channels: int, key_f16_channels: int, value_dim: int,
                 fuser_blocks: int, backbone_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.backbone, (channels,) = timm_features(backbone, (16,), in_channels, backbone_kwargs)
        self.fuse = FusionBlock(channels, key_f16_channels, value_dim)
        self.refine = nn.Sequential(*[ResBlock(value_dim, value_dim)
                                      for _ in range(max(0, fuser_blocks - 1))])

    def forward(self, inputs: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """``inputs`` (B, O, C + mask channels, H, W), ``f16`` (B, Cf, h, w) ->
        (B, O, value_dim, h, w)."""
        batch, objects = inputs.shape[:2]
        (features,) = self.backbone(inputs.flatten(0, 1))
        fused = self.fuse(features.view(batch, objects, *features.shape[1:]), f16)
        return self.refine(fused.flatten(0, 1)).view(batch, objects, *fused.shape[2:])
