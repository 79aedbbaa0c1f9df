"""Object modes of a propagation session: the strategy that tells a
:class:`~slicevos.inference.engines.stcn.engine.PropagationSession` how key masks become value-encoder
masks, how decoder output becomes probabilities and how probabilities map to labels.

``PerObjectMode``: one binary mask / memory value per object, probabilities over background +
the O objects (soft aggregation), channel o + 1 -> the o-th object id. ``JointMode``: the
one-hot mask of K classes, one memory value per slice, softmax over the K class logits,
channel = class id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from slicevos.errors import InputError
from slicevos.models.propagation import PropagationNet


class ObjectMode:
    """How a session talks to the network in one object mode (see the module doc). Shapes:
    ``labels`` (H', W') uint8 padded key labels; masks (1, M, H', W') on the labels' device;
    ``decoded`` the output of ``PropagationNet.decode``; probabilities (1, L, H', W') float32."""

    values_depend_on_objects: bool  # key values change when the object set changes

    def check_key(self, z: int, labels: np.ndarray) -> None:
        """Raise InputError for key labels this mode cannot take."""

    def key_masks(self, labels: torch.Tensor, object_ids: Sequence[int]) -> torch.Tensor:
        """Value-encoder masks (1, M, H', W') bool of a key slice (M = O or K)."""
        raise NotImplementedError

    def probabilities(self, net: PropagationNet, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder logits -> probabilities (1, L, H', W') float32, L = O + 1 or K."""
        raise NotImplementedError

    def value_masks(self, probs: torch.Tensor) -> torch.Tensor:
        """Masks of a propagated slice for the value encoder, from its probabilities."""
        raise NotImplementedError

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        """uint8 (L,): the label of each probability channel (applied to the argmax)."""
        raise NotImplementedError


class PerObjectMode(ObjectMode):
    """One binary mask / value per object; background + objects probabilities."""

    values_depend_on_objects = True

    def key_masks(self, labels: torch.Tensor, object_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor(list(object_ids), dtype=labels.dtype, device=labels.device)
        return (labels[None] == ids[:, None, None])[None]

    def probabilities(self, net: PropagationNet, decoded: torch.Tensor) -> torch.Tensor:
        return net.aggregate(decoded).float().softmax(dim=1)

    def value_masks(self, probs: torch.Tensor) -> torch.Tensor:
        return probs[:, 1:]

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return np.array([0, *object_ids], np.uint8)


class JointMode(ObjectMode):
    """One-hot class masks, one value per slice; class probabilities, argmax = class id."""

    values_depend_on_objects = False

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def check_key(self, z: int, labels: np.ndarray) -> None:
        if labels.size and int(labels.max()) >= self.num_classes:
            raise InputError(None, f"key mask of slice {z} holds label {int(labels.max())}, but "
                             f"the joint-mode network knows class ids 0..{self.num_classes - 1}",
                             "pass labels of the network's schema, or use a per_object network "
                             "for arbitrary objects")

    def key_masks(self, labels: torch.Tensor, object_ids: Sequence[int]) -> torch.Tensor:
        return F.one_hot(labels.long(), self.num_classes).permute(2, 0, 1)[None]

    def probabilities(self, net: PropagationNet, decoded: torch.Tensor) -> torch.Tensor:
        return decoded.float().softmax(dim=1)

    def value_masks(self, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def label_lut(self, object_ids: Sequence[int]) -> np.ndarray:
        return np.arange(self.num_classes, dtype=np.uint8)


def object_mode(net: PropagationNet) -> ObjectMode:
    """The :class:`ObjectMode` strategy of ``net``."""
    return JointMode(net.num_classes) if net.joint else PerObjectMode()
