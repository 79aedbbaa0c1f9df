"""Dense optical flow between adjacent slices (OpenCV DIS) and composed slice-to-key maps.

Flow and map conventions: ``slicevos.data.optical_flow``. Composing maps (:func:`compose`) warps
each key array exactly once per slice, however far the key is: no blur builds up along the
chain as it does when the previous slice's warped mask is warped again.

Flows are computed on one uint8 channel of the windowed image (``FlowSettings.channel``), at
``1 / downscale`` resolution when asked, and computed ahead of a pass on ``threads`` worker
threads (OpenCV releases the GIL).
A pass keeps its composed map only over the track's region of the slice (:class:`RegionMap`):
composing a 512 x 512 map costs about 2.5 ms a slice, and one organ's region is a fraction of
that. Its edges are replicated, as the slice's are.

Where DIS's finest level is half the slice's size or coarser (512 x 512 CT with the default
preset), the flow it gives is a bilinear enlargement of the flow there, so maps are kept at
nodes every 2nd pixel (the centres of 2 x 2 blocks), the flows are computed there directly
(on the slices' block means; ``node_flow_settings``: the same values), and a map is spread
over the pixels (bilinear) only where a pass reads it: a quarter of the composing, and a
quarter of the flows' memory. A correction on ``lidc_chest_abdomen133`` re-propagated in
0.29 -> 0.21 s (docs/labeling.md, "Maps on DIS's grid").

Flows are not kept by default: each is used once per pass, so memory stays at a window of
pending flows (2 x 4 bytes per pixel each). An interactive session, which re-propagates the same
segments after each correction, keeps up to ``cache_mb`` of them (int16 fixed point, 4 bytes
per pixel; least recently used dropped first). While it waits for the user it can compute the
flows no pass has asked for yet (:meth:`FlowFields.warm`): a new key between two others needs
the flows of the other direction there, and computing them is most of what such a correction
would otherwise wait for. Passes on several threads share one :class:`FlowFields`: each thread
queues its own flows, and a flow that one is computing is waited for by the others, not
computed twice.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import cv2
import numpy as np
import torch

from slicevos.data.optical_flow import (  # noqa: F401  (re-exported)
    PRESETS,
    FlowSettings,
    SliceFlow,
    compose,
    identity_map,
    node_flow_settings,
    to_fixed,
)


def flow_image(image: torch.Tensor, channel: int, smooth_sigma: float = 0.0) -> np.ndarray:
    """The uint8 (D, H, W) stack the flow sees: one channel of the windowed volume (D, C, H, W)
    (``channel`` -1: the mean of all), optionally blurred in-plane."""
    if channel >= image.shape[1]:
        raise ValueError(f"flow channel {channel} is not in an image of {image.shape[1]} "
                         f"channels")
    stack = (image.float().mean(1).round().to(torch.uint8) if channel < 0
             else image[:, channel]).numpy()
    if smooth_sigma > 0:
        stack = np.stack([cv2.GaussianBlur(s, (0, 0), smooth_sigma) for s in stack])
    return np.ascontiguousarray(stack)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _shared_pool(threads: int) -> ThreadPoolExecutor:
    """One flow worker pool per thread count for the whole process: sessions come and go (a
    benchmark makes hundreds), so none owns threads that it would have to shut down."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, f"slicevos-flow{threads}")
        return _POOLS[threads]


class FlowFields:
    """Flows between adjacent slices of one volume, computed ahead of a pass on worker threads
    (at most ``window`` pending at a time) and handed out once: a pass uses each flow once,
    and re-propagating a segment after a correction costs only that segment's flows.
    Passes may run on several threads at once: each thread has its own queue."""

    def __init__(self, stack: np.ndarray, settings: FlowSettings, window: int = 16,
                 cache_mb: float = 0.0) -> None:
        self.stack = stack
        self.cache_bytes = int(cache_mb * 2**20)
        self._kept: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.settings = settings
        self.window = window
        self.depth, self.height, self.width = stack.shape
        self._lock = threading.Lock()
        self._queues: dict[int, list[tuple[int, int]]] = {}  # thread -> pairs to queue
        # pair -> (the flow on its way, the thread whose pass queued it)
        self._pending: dict[tuple[int, int], tuple[Future, int]] = {}
        self._flow = SliceFlow(settings, self.height, self.width)
        self.computed = 0  # flows computed so far (instrumentation; counted when handed out)

    def prefetch(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Queue the flows of ``pairs`` for the calling thread's pass (in the order it will
        ask for them); flows that thread queued for an earlier pass and never asked for are
        dropped (``prefetch(())`` when a pass ends)."""
        thread = threading.get_ident()
        with self._lock:
            queue = [pair for pair in pairs if abs(pair[0] - pair[1]) == 1
                     and pair not in self._kept]
            if queue:
                self._queues[thread] = queue
            else:
                self._queues.pop(thread, None)
            wanted = set(queue)
            for pair in [p for p, (_, owner) in self._pending.items()
                         if owner == thread and p not in wanted]:
                self._pending.pop(pair)[0].cancel()
            self._fill()

    def flow(self, a: int, b: int) -> np.ndarray:
        """Flow (H, W, 2) from slice ``a`` to its neighbour ``b`` (full size): float32, or
        int16 fixed point (``to_fixed``) with a cache (the same values whether it was kept or
        just computed). A flow on its way (queued, or computed by another thread's pass) is
        waited for, not computed again."""
        if abs(a - b) != 1:
            raise ValueError(f"flows are between adjacent slices, got {a} -> {b}")
        while True:
            with self._lock:
                kept = self._kept.get((a, b))
                if kept is not None:
                    self._kept.move_to_end((a, b))
                    return kept  # int16 fixed point (compose takes it as it is)
                entry = self._pending.get((a, b))
                if entry is None:  # computed here; a placeholder others can wait on
                    entry = self._pending[a, b] = Future(), threading.get_ident()
                    entry[0].set_running_or_notify_cancel()  # no longer cancellable
                    mine = True
                else:
                    mine = False
                self._fill()
            future = entry[0]
            if mine:
                try:
                    future.set_result(self._compute(a, b))
                except BaseException as error:
                    future.set_exception(error)
            try:
                flow = future.result()
            except CancelledError:  # its pass no longer wanted it before it started
                continue
            break
        with self._lock:
            if self._pending.get((a, b)) is entry:
                self._pending.pop((a, b))
                self.computed += 1
            if self.cache_bytes:
                flow = to_fixed(flow)
                if (a, b) not in self._kept:
                    self._kept[a, b] = flow
                    while len(self._kept) * flow.size * 2 > self.cache_bytes:
                        self._kept.popitem(last=False)
        return flow

    def warm(self, stop: threading.Event) -> int:
        """Compute and keep the flows between adjacent slices, both ways, that are not kept
        yet, ``threads`` at a time, until all are, the cache is full (none is dropped for
        them) or ``stop`` is set; the number computed. Not while a pass runs (the caller
        makes sure): it fills the same cache without a lock."""
        if not self.cache_bytes:
            return 0
        slice_bytes = self.height * self.width * 2 * 2  # (H, W, 2) int16
        room = self.cache_bytes // slice_bytes - len(self._kept)
        missing = [(a, b) for a in range(self.depth) for b in (a - 1, a + 1)
                   if 0 <= b < self.depth and (a, b) not in self._kept][:max(room, 0)]
        threads = self.settings.threads
        pool = _shared_pool(threads) if threads > 1 else None
        done = 0
        for first in range(0, len(missing), threads):
            if stop.is_set():
                break
            batch = missing[first:first + threads]
            # a flow an earlier pass queued but never asked for may be on its way already
            flows = ([(self._pending.pop(pair, None) or (pool.submit(self._compute, *pair),))[0]
                      for pair in batch] if pool else [self._compute(*pair) for pair in batch])
            for pair, flow in zip(batch, flows, strict=True):
                self._kept[pair] = to_fixed(flow.result() if pool else flow)
                self._kept.move_to_end(pair, last=False)  # the least recently used: first out
                done += 1
        self.computed += done
        return done

    def _fill(self) -> None:
        """Submit queued flows, the threads' queues in turn, until ``window`` are pending
        (under the lock)."""
        if self.settings.threads < 2:
            return
        pool = _shared_pool(self.settings.threads)
        while self._queues and len(self._pending) < self.window:
            for thread in list(self._queues):
                queue = self._queues[thread]
                pair = queue.pop(0)
                if not queue:
                    del self._queues[thread]
                if pair not in self._pending and pair not in self._kept:
                    self._pending[pair] = pool.submit(self._compute, *pair), thread
                if len(self._pending) >= self.window:
                    break

    def _compute(self, a: int, b: int) -> np.ndarray:
        return self._flow(self.stack[a], self.stack[b])


class RegionMap:
    """A map of a slice onto the key (absolute key coordinates (x, y), as :func:`compose`
    makes) kept only over ``box`` (rows, cols) of the slice, at its nodes: one every
    ``step`` pixels, node ``i`` at pixel ``step * i + (step - 1) / 2``, the centre of its
    block (:func:`node_grid`). ``box`` starts on a block's edge and stops on one or at the
    slice's end. Indexed with absolute pixel boxes inside it, it gives the map at every pixel
    (bilinear between the nodes; steps allowed with ``step`` 1). :meth:`step` composes one
    more flow, given at the nodes (a :class:`FlowFields` of the slices' block means,
    :func:`block_mean`, with ``node_flow_settings``)."""

    def __init__(self, grid: np.ndarray, box: tuple[slice, slice], local_grid: np.ndarray,
                 step: int = 1) -> None:
        """``grid``: :func:`node_grid` of the slice; ``local_grid``: :func:`identity_map` of
        the box's nodes."""
        self.box, self.grid, self.node_step = box, grid, step
        self.nodes = (slice(box[0].start // step, -(-box[0].stop // step)),
                      slice(box[1].start // step, -(-box[1].stop // step)))
        self.values = np.ascontiguousarray(grid[self.nodes])
        self.local_grid = local_grid

    def step(self, flow: np.ndarray) -> None:
        """Compose the flow (nodes of the slice, 2) from the next slice to the one this map
        is of."""
        self.values = compose(self.values, flow[self.nodes], self.local_grid)

    def frozen(self) -> RegionMap:
        """This map as it is now: later steps leave it alone (they replace the values, never
        change them)."""
        return copy.copy(self)

    def clamp(self, box: tuple[slice, slice]) -> tuple[slice, slice]:
        """``box`` cut to this map's box."""
        rows, cols = self.box
        return (slice(max(box[0].start, rows.start), min(box[0].stop, rows.stop)),
                slice(max(box[1].start, cols.start), min(box[1].stop, cols.stop)))

    def cover(self, box: tuple[slice, slice]) -> tuple[slice, slice]:
        """The nodes (absolute node indices) whose values interpolate the map over the pixel
        ``box`` (inside the map's box)."""
        step = self.node_step
        if step == 1:
            return box
        return tuple(slice(max(nodes.start, int(np.floor((pixels.start - (step - 1) / 2)
                                                         / step))),
                           min(nodes.stop, int(np.floor((pixels.stop - 1 - (step - 1) / 2)
                                                        / step)) + 2))
                     for pixels, nodes in zip(box, self.nodes, strict=True))

    def at_nodes(self, nodes: tuple[slice, slice]) -> np.ndarray:
        """The map's values at ``nodes`` (absolute node indices inside the map's)."""
        top, left = self.nodes[0].start, self.nodes[1].start
        return self.values[nodes[0].start - top:nodes[0].stop - top,
                           nodes[1].start - left:nodes[1].stop - left]

    def to_pixels(self, values: np.ndarray, nodes: tuple[slice, slice],
                  box: tuple[slice, slice]) -> np.ndarray:
        """``values`` (..., C) given at ``nodes`` (:meth:`cover` of ``box``), at every pixel of
        ``box``: bilinear between the nodes (``cv2.resize`` by ``step`` puts the nodes at the
        centres of their blocks, as :func:`node_grid` does)."""
        step = self.node_step
        if step > 1:
            values = cv2.resize(values, None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR)
        top, left = nodes[0].start * step, nodes[1].start * step
        return values[box[0].start - top:box[0].stop - top,
                      box[1].start - left:box[1].stop - left]

    def shift(self, box: tuple[slice, slice]) -> float:
        """The largest displacement (pixels) of the map over ``box`` (inside the map's box),
        read every 4th pixel (displacements are smooth)."""
        stride = max(1, 4 // self.node_step)
        nodes = self.cover(box)
        sample = (slice(nodes[0].start, nodes[0].stop, stride),
                  slice(nodes[1].start, nodes[1].stop, stride))
        top, left = self.nodes[0].start, self.nodes[1].start
        values = self.values[slice(sample[0].start - top, sample[0].stop - top, stride),
                             slice(sample[1].start - left, sample[1].stop - left, stride)]
        return float(np.abs(values - self.grid[sample]).max())

    def __getitem__(self, box: tuple[slice, slice]) -> np.ndarray:
        rows, cols = box
        if self.node_step == 1:  # the values themselves (steps allowed)
            top, left = self.box[0].start, self.box[1].start
            return self.values[slice(rows.start - top, rows.stop - top, rows.step),
                               slice(cols.start - left, cols.stop - left, cols.step)]
        nodes = self.cover(box)
        return self.to_pixels(self.at_nodes(nodes), nodes, box)

    def relative(self, box: tuple[slice, slice], origin: tuple[float, float]) -> np.ndarray:
        """The map over the pixel ``box`` as positions relative to ``origin`` (x, y) of the
        key (subtracted at the nodes, before they are spread over the pixels)."""
        # cv2: ~10x numpy's broadcast over the (x, y) axis
        offset = (float(origin[0]), float(origin[1]), 0.0, 0.0)
        if self.node_step == 1:
            return cv2.subtract(self[box], offset)
        nodes = self.cover(box)
        return self.to_pixels(cv2.subtract(self.at_nodes(nodes), offset), nodes, box)


def node_grid(height: int, width: int, step: int) -> np.ndarray:
    """(ceil(H / step), ceil(W / step), 2) float32: the (x, y) pixel position of each node
    of a map kept every ``step`` pixels, the centre of its block (``identity_map`` for 1)."""
    nodes = identity_map(-(-height // step), -(-width // step))
    return nodes if step == 1 else nodes * np.float32(step) + np.float32((step - 1) / 2)


def block_mean(array: np.ndarray, step: int) -> np.ndarray:
    """(H, W[, C]) -> (ceil(H / step), ceil(W / step)[, C]): the mean of each ``step`` x
    ``step`` block (the slice's last ones padded with its edge), the value at each node of
    :func:`node_grid`."""
    if step == 1:
        return array
    height, width = array.shape[:2]
    if height % step or width % step:
        array = cv2.copyMakeBorder(array, 0, -height % step, 0, -width % step,
                                   cv2.BORDER_REPLICATE)
    return cv2.resize(array, (array.shape[1] // step, array.shape[0] // step),
                      interpolation=cv2.INTER_AREA)
