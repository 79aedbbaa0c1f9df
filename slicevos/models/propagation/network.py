"""The STCN propagation network: stateless, tensor in / tensor out, batched over objects.

One class serves training and inference. Inference sessions (``slicevos.inference``) keep the
memory bank and call the stage methods: :meth:`PropagationNet.encode_key` once per slice,
:meth:`~PropagationNet.encode_value` for slices that join the memory,
:meth:`~PropagationNet.read_memory` + :meth:`~PropagationNet.decode` to segment a slice.
Training calls :meth:`~PropagationNet.forward_clip` (also ``net(images, first_masks)``).

Object modes (``config.object_mode``):

- ``per_object``: masks (B, O, H, W) hold one soft binary mask per object; values
  (B, O, Cv, h, w); :meth:`decode` gives one logit map per object (B, O, H, W);
  :meth:`aggregate` turns them into O + 1 (background first) aggregated logits.
- ``joint``: masks (B, K, H, W) are the one-hot (or soft) class masks, background channel 0
  included; one value map per slice (B, 1, Cv, h, w); :meth:`decode` gives class logits
  (B, K, H, W).

H and W must be multiples of ``output_stride`` (16); pad in the caller
(``slicevos.preprocessing.padding.pad_to_multiple``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slicevos.config import from_dict
from slicevos.errors import InputError
from slicevos.models.checks import check_inputs
from slicevos.models.propagation import memory
from slicevos.models.propagation.config import PropagationModelConfig
from slicevos.models.propagation.decoder import Decoder
from slicevos.models.propagation.encoders import KeyEncoder, KeyFeatures, ValueEncoder
from slicevos.models.registry import register_model

PROBABILITY_EPS = 1e-7


def soft_aggregate(object_probs: torch.Tensor) -> torch.Tensor:
    """Soft aggregation (STCN / Cutie) of per-object probabilities (B, O, H, W) in [0, 1] ->
    logits (B, O + 1, H, W), channel 0 = background.

    Background probability = prod_i (1 - p_i); the O + 1 probabilities are clamped to
    [eps, 1 - eps] and mapped to logits ``log(p / (1 - p))``; their softmax over axis 1 is the
    aggregated distribution (it sums to 1 and keeps a confident object on top).
    """
    background = torch.prod(1 - object_probs, dim=1, keepdim=True)
    return torch.logit(torch.cat([background, object_probs], dim=1), eps=PROBABILITY_EPS)


def other_objects(masks: torch.Tensor) -> torch.Tensor:
    """For masks (B, O, H, W): the union of the other objects' masks for each object (sum of
    the others, clamped to [0, 1]), the value encoder's "others" channel."""
    return (masks.sum(dim=1, keepdim=True) - masks).clamp(0, 1)


@dataclass
class ClipOutput:
    """Output of :meth:`PropagationNet.forward_clip` for frames 1..T-1.

    ``logits`` (B, T-1, L, H, W): the logits to train on, L = O + 1 aggregated logits
    (background first) in per_object mode, L = K class logits in joint mode;
    ``probabilities``: ``logits.softmax(2)``; ``object_logits``: the decoder's own output,
    (B, T-1, O, H, W) per-object logits in per_object mode (== ``logits`` in joint mode).
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    object_logits: torch.Tensor


class PropagationNet(nn.Module):
    """STCN: key encoder, value encoder, L2 memory read with top-k, decoder (see module doc)."""

    output_stride = 16

    def __init__(self, config: PropagationModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PropagationModelConfig()
        self.num_classes = cfg.num_classes
        self.in_channels = cfg.in_channels
        self.joint = cfg.object_mode == "joint"
        self.key_encoder = KeyEncoder(cfg.key_backbone, cfg.in_channels, cfg.key_dim,
                                      dict(cfg.key_backbone_kwargs))
        key_channels = self.key_encoder.channels
        self.value_encoder = ValueEncoder(cfg.value_backbone, cfg.in_channels + cfg.mask_channels,
                                          key_channels[2], cfg.value_dim, cfg.value_fuser_blocks,
                                          dict(cfg.value_backbone_kwargs))
        self.decoder = Decoder(cfg.value_dim, key_channels, cfg.decoder_channels,
                               cfg.num_classes if self.joint else 1,
                               cfg.prior_logit_clip if cfg.prior_input else None,
                               cfg.prior_correction_limit)

    def encode_key(self, images: torch.Tensor) -> KeyFeatures:
        """images (B, C, H, W) in [0, 1] -> :class:`KeyFeatures` (key at stride 16 + skips)."""
        self._check_images(images)
        return self.key_encoder(images)

    def encode_value(self, images: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor,
                     others: torch.Tensor | None = None) -> torch.Tensor:
        """Memory values of B slices -> (B, O, value_dim, H/16, W/16).

        ``images`` (B, C, H, W); ``f16`` from :meth:`encode_key` of the same images;
        per_object: ``masks`` (B, O, H, W) float in [0, 1], ``others`` (B, O, H, W) the other
        objects' masks (default :func:`other_objects` of ``masks``); joint: ``masks``
        (B, K, H, W) class masks, ``others`` unused, O == 1.
        """
        self._check_images(images)
        self._check_masks(images, masks, "masks")
        if self.joint:
            inputs = torch.cat([images, masks], dim=1).unsqueeze(1)
        else:
            others = other_objects(masks) if others is None else others
            self._check_masks(images, others, "others", objects=masks.shape[1])
            batch, objects = masks.shape[:2]
            inputs = torch.cat([images.unsqueeze(1).expand(batch, objects, *images.shape[1:]),
                                masks.unsqueeze(2), others.unsqueeze(2)], dim=2)
        return self.value_encoder(inputs.to(images.dtype), f16)

    @staticmethod
    def read_memory(query_key: torch.Tensor, memory_keys: torch.Tensor,
                    memory_values: torch.Tensor, top_k: int | None) -> torch.Tensor:
        """query_key (B, Ck, h, w), memory_keys (B, Ck, T, h, w), memory_values
        (B, O, Cv, T, h, w) -> readout (B, O, Cv, h, w). ``top_k``: memory entries per query
        (``config.top_k`` at inference; None = full softmax, training)."""
        return memory.read_memory(query_key, memory_keys, memory_values, top_k)

    def decode(self, features: KeyFeatures, readout: torch.Tensor,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        """readout (B, O, Cv, h, w) -> logits (B, O, H, W) per object, or (B, K, H, W) class
        logits in joint mode (readout (B, 1, Cv, h, w)). ``prior``: for a network built with
        ``prior_input`` (and only then), the flow prior of the slice in the shape of the
        logits: signed distances in pixels, > 0 inside (see :class:`PropagationModelConfig`).
        """
        self._check_prior(features, readout, prior)
        if prior is not None:
            cfg = self.config
            prior = (prior / cfg.prior_temperature).clamp(-cfg.prior_logit_clip,
                                                          cfg.prior_logit_clip)
            prior = prior.unsqueeze(1) if self.joint else prior.unsqueeze(2)
        logits = self.decoder(features, readout, prior)
        return logits[:, 0] if self.joint else logits[:, :, 0]

    @staticmethod
    def aggregate(object_logits: torch.Tensor) -> torch.Tensor:
        """Per-object logits (B, O, H, W) -> aggregated logits (B, O + 1, H, W), background
        first: :func:`soft_aggregate` of ``sigmoid(object_logits)``. Softmax over axis 1
        gives the probabilities."""
        return soft_aggregate(torch.sigmoid(object_logits))

    def forward_clip(self, images: torch.Tensor, first_masks: torch.Tensor,
                     top_k: int | None = None, priors: torch.Tensor | None = None
                     ) -> ClipOutput:
        """Training forward on clips: images (B, T, C, H, W), first_masks (B, O, H, W) for
        frame 0 (joint: (B, K, H, W)). Frame t >= 1 is segmented from the memory of frames
        0..t-1; frames >= 1 enter the memory with their predicted soft masks (not detached).
        ``priors`` (B, T-1, O or K, H, W): the flow priors of frames 1..T-1 (``prior_input``
        networks only)."""
        if images.ndim != 5 or images.shape[1] < 2:
            raise InputError(None, f"forward_clip expects images of shape (B, T >= 2, C, H, W), "
                             f"got {tuple(images.shape)}", "stack the clip's slices on axis 1")
        batch, frames = images.shape[:2]
        flat = self.encode_key(images.flatten(0, 1))
        per_frame = [flat.index(slice(t, None, frames)) for t in range(frames)]
        keys = torch.stack([f.key for f in per_frame], dim=2)  # (B, Ck, T, h, w)
        values = [self.encode_value(images[:, 0], per_frame[0].f16, first_masks)]
        logits, object_logits = [], []
        for t in range(1, frames):
            readout = self.read_memory(per_frame[t].key, keys[:, :, :t],
                                       torch.stack(values, dim=3), top_k)
            decoded = self.decode(per_frame[t], readout,
                                  None if priors is None else priors[:, t - 1])
            frame_logits = decoded if self.joint else self.aggregate(decoded)
            logits.append(frame_logits)
            object_logits.append(decoded)
            if t < frames - 1:
                probs = frame_logits.softmax(dim=1)
                masks = probs if self.joint else probs[:, 1:]
                values.append(self.encode_value(images[:, t], per_frame[t].f16, masks))
        stacked = torch.stack(logits, dim=1)
        return ClipOutput(stacked, stacked.softmax(dim=2), torch.stack(object_logits, dim=1))

    def forward(self, images: torch.Tensor, first_masks: torch.Tensor,
                top_k: int | None = None, priors: torch.Tensor | None = None) -> ClipOutput:
        """Same as :meth:`forward_clip` (so DDP and hooks see the training forward)."""
        return self.forward_clip(images, first_masks, top_k, priors)

    def _check_images(self, images: torch.Tensor) -> None:
        check_inputs(images, None, self.output_stride, "PropagationNet", needs_positions=False)
        if images.shape[1] != self.in_channels:
            raise InputError(None, f"PropagationNet was built for {self.in_channels} image "
                             f"channels, got {images.shape[1]}", "pass the windowed slices "
                             "(B, C, H, W) or rebuild with in_channels=C")

    def _check_prior(self, features: KeyFeatures, readout: torch.Tensor,
                     prior: torch.Tensor | None) -> None:
        if self.config.prior_input and prior is None:
            raise InputError(None, "this STCN is flow-guided (model.prior_input: true) and "
                             "needs the flow engine's prior for every slice it segments",
                             "run it with --propagator guided (or fused), which supplies it")
        if not self.config.prior_input and prior is not None:
            raise InputError(None, "this STCN takes no prior (model.prior_input: false)",
                             "drop the prior, or train a flow-guided network")
        if prior is None:
            return
        size = tuple(features.f4.shape[-2:])
        channels = self.num_classes if self.joint else readout.shape[1]
        expected = (readout.shape[0], channels, size[0] * 4, size[1] * 4)
        if tuple(prior.shape) != expected:
            raise InputError(None, f"the prior must have shape {expected} (B, "
                             f"{'K' if self.joint else 'O'}, H, W), got {tuple(prior.shape)}",
                             "one signed-distance map per object (per class in joint mode) "
                             "at the padded image size")

    def _check_masks(self, images: torch.Tensor, masks: torch.Tensor, name: str,
                     objects: int | None = None) -> None:
        batch, _, height, width = images.shape
        if self.joint:
            expected = f"(B={batch}, K={self.num_classes}, {height}, {width})"
            ok = tuple(masks.shape) == (batch, self.num_classes, height, width)
        else:
            expected = f"(B={batch}, O{'' if objects is None else f'={objects}'}, {height}, {width})"
            ok = (masks.ndim == 4 and masks.shape[0] == batch and masks.shape[1] >= 1
                  and tuple(masks.shape[2:]) == (height, width)
                  and (objects is None or masks.shape[1] == objects))
        if not ok:
            raise InputError(None, f"PropagationNet ({self.config.object_mode}) expects {name} "
                             f"of shape {expected}, got {tuple(masks.shape)}",
                             "one float mask per object (per_object) or per class (joint) "
                             "at the image size")


@register_model("stcn")
def stcn(num_classes: int, in_channels: int = 3, position_encoding: bool = True,
         **params: Any) -> PropagationNet:
    """STCN from :class:`PropagationModelConfig` keyword arguments (defaults: the paper's
    ResNet-50 key / ResNet-18 value encoders). ``num_classes`` and ``in_channels`` come from
    ``build_model``; STCN takes no slice position, so ``position_encoding`` is ignored."""
    cfg = from_dict(PropagationModelConfig,
                    {**params, "num_classes": num_classes, "in_channels": in_channels},
                    "stcn params")
    return PropagationNet(cfg)
