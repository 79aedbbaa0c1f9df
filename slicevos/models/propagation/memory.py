"""STCN memory read as pure functions (no state): affinity, (top-k) softmax, readout.

Shapes: ``N`` memory positions (T slices x h x w), ``M`` query positions (h x w).

The affinity is the negative squared L2 distance between keys, scaled by ``1/sqrt(Ck)``:
``-||k_m - k_q||^2 = 2 k_m.k_q - ||k_m||^2 - ||k_q||^2``. The ``||k_q||^2`` term is the same
for every memory position of one query, so it cancels in the softmax over memory positions
and is left out.
"""

from __future__ import annotations

import math

import torch


def l2_affinity(memory_keys: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """``(2 k_m.k_q - ||k_m||^2) / sqrt(Ck)`` for ``memory_keys`` (B, Ck, N) and
    ``query_keys`` (B, Ck, M) -> (B, N, M). Softmax over axis 1 gives the STCN weights."""
    channels = memory_keys.shape[1]
    squared_norm = memory_keys.pow(2).sum(1).unsqueeze(2)  # (B, N, 1)
    dot = memory_keys.transpose(1, 2) @ query_keys  # (B, N, M)
    return (2 * dot - squared_norm) / math.sqrt(channels)


def softmax_topk(affinity: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Softmax over memory positions (axis 1) of ``affinity`` (B, N, M).

    With ``top_k`` only the ``top_k`` largest entries per query (column) take part; the
    others get weight 0. ``None`` (or ``top_k >= N``) gives the full softmax.
    """
    if top_k is None or top_k >= affinity.shape[1]:
        return affinity.softmax(dim=1)
    values, indices = affinity.topk(top_k, dim=1)
    return torch.zeros_like(affinity).scatter_(1, indices, values.softmax(dim=1))


def readout(weights: torch.Tensor, memory_values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of memory values: ``weights`` (B, N, M), ``memory_values`` (B, O, Cv, N)
    -> (B, O, Cv, M). All objects share the weights, so they are read in one matmul."""
    batch, objects, channels, positions = memory_values.shape
    flat = memory_values.reshape(batch, objects * channels, positions)
    return (flat @ weights).view(batch, objects, channels, weights.shape[2])


def read_memory(query_key: torch.Tensor, memory_keys: torch.Tensor,
                memory_values: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Read the memory for one query slice.

    ``query_key`` (B, Ck, h, w), ``memory_keys`` (B, Ck, T, h, w), ``memory_values``
    (B, O, Cv, T, h, w) -> readout (B, O, Cv, h, w). ``top_k``: see :func:`softmax_topk`.
    """
    batch, key_channels, height, width = query_key.shape
    objects, value_channels = memory_values.shape[1:3]
    affinity = l2_affinity(memory_keys.flatten(2), query_key.reshape(batch, key_channels, -1))
    weights = softmax_topk(affinity, top_k)
    values = memory_values.reshape(batch, objects, value_channels, -1)
    return readout(weights, values).view(batch, objects, value_channels, height, width)
