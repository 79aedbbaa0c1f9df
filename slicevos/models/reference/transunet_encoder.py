"""TransUNet's hybrid encoder: a timm CNN to stride 16, then a ViT over the 1x1-patch tokens.

The CNN is any timm model with ``features_only`` support whose first four feature maps have
reductions 2, 4, 8, 16 (ResNet / ResNetV2 families). The stride-16 map is projected to
``vit_dim`` by a 1x1 convolution (patch size 1, as in R50-ViT-B/16), learned absolute position
embeddings are added (resampled bicubically when the token grid differs from the one they were
built for), and timm ViT blocks run over the tokens. The stride 8, 4 and 2 maps are the
decoder's skips.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import timm
import torch
from timm.layers import StdConv2d, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from slicevos.errors import InputError

#: conv_layer names usable in YAML ``backbone_kwargs`` (timm takes a class, not a string)
CONV_LAYERS: dict[str, Any] = {"std_conv": partial(StdConv2d, eps=1e-8)}
FEATURE_REDUCTIONS = (2, 4, 8, 16)


def create_backbone(name: str, in_channels: int, backbone_kwargs: dict[str, Any]) -> nn.Module:
    """timm ``features_only`` CNN returning maps at strides 2, 4, 8, 16 (random init)."""
    kwargs = dict(backbone_kwargs)
    if isinstance(kwargs.get("conv_layer"), str):
        conv = kwargs["conv_layer"]
        if conv not in CONV_LAYERS:
            raise InputError(None, f"unknown conv_layer {conv!r} in backbone_kwargs",
                             f"use one of {sorted(CONV_LAYERS)} or leave it out")
        kwargs["conv_layer"] = CONV_LAYERS[conv]
    backbone = timm.create_model(name, pretrained=False, features_only=True,
                                 out_indices=(0, 1, 2, 3), in_chans=in_channels, **kwargs)
    reductions = tuple(backbone.feature_info.reduction())
    if reductions != FEATURE_REDUCTIONS:
        raise InputError(None, f"TransUNet backbone {name!r} gives features at strides {reductions}",
                         f"choose a timm CNN whose first four feature maps have strides "
                         f"{FEATURE_REDUCTIONS} (e.g. resnetv2_50, resnet18)")
    return backbone


class HybridViTEncoder(nn.Module):
    """images (B, C, H, W) -> (tokens as a map (B, vit_dim, H/16, W/16), skips).

    ``skips`` are the CNN maps at strides 8, 4, 2 (deepest first); ``skip_channels`` their
    channel counts. ``grid_size`` is the token grid the position embeddings are stored for.
    """

    def __init__(self, backbone: str, backbone_kwargs: dict[str, Any], in_channels: int,
                 img_size: int, vit_dim: int, vit_depth: int, vit_heads: int, mlp_ratio: float,
                 dropout: float, attn_dropout: float, drop_path: float) -> None:
        super().__init__()
        self.cnn = create_backbone(backbone, in_channels, backbone_kwargs)
        channels = self.cnn.feature_info.channels()
        self.skip_channels = tuple(channels[2::-1])
        self.grid_size = (img_size // 16, img_size // 16)
        self.patch_embed = nn.Conv2d(channels[3], vit_dim, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], vit_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        rates = torch.linspace(0, drop_path, vit_depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(vit_dim, vit_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout,
                  attn_drop=attn_dropout, drop_path=rate, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for rate in rates
        ])
        self.norm = nn.LayerNorm(vit_dim, eps=1e-6)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stride2, stride4, stride8, stride16 = self.cnn(images)
        x = self.patch_embed(stride16)
        batch, dim, height, width = x.shape
        pos = resample_abs_pos_embed(self.pos_embed, new_size=[height, width],
                                     old_size=list(self.grid_size), num_prefix_tokens=0)
        tokens = self.pos_drop(x.flatten(2).transpose(1, 2) + pos)
        tokens = self.norm(self.blocks(tokens))
        x = tokens.transpose(1, 2).reshape(batch, dim, height, width)
        return x, [stride8, stride4, stride2]
