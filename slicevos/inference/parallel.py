"""Running the passes of a session's out-of-date segments, one after the other or on
threads (an engine whose :attr:`~slicevos.inference.session.PassEngine.pass_threads` is over
1: the flow engine).

On threads every pass is a job of its own, the forward and the backward pass of a two-key
segment included; the thread that reads the results (the session's) fuses a slice as soon as
both of its passes have given it, and finishes a slice beyond the outermost key as it comes.
A slice's result does not depend on which thread made it or when, so the labels are those of
one thread; only the order in which slices come out differs.

:class:`SendAhead` runs a generator that a pass drives with ``send`` on a thread of its own
(the flow engine's second opinions walk beside the pass beyond the outermost key).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from slicevos.inference.fusion import PassOutput, from_cpu_half, to_cpu_half
from slicevos.inference.tracks import SegmentResult, Track

if TYPE_CHECKING:
    Segment = tuple[int | None, int | None, int, int]  # left key, right key, low, high


def run_segments(jobs: Sequence[tuple[Track, Segment]], threads: int,
                 disagreement: np.ndarray | None = None
                 ) -> Iterator[tuple[Track, int, SegmentResult]]:
    """``(track, z, result)`` of every slice of the segments ``jobs`` as they finish: one
    pass after the other (``threads`` < 2), else every pass on one of ``threads`` threads.
    ``disagreement`` as in :meth:`Track.run_segment`. Closing the generator stops the threads
    after the slice each is on."""
    if threads < 2:
        for track, segment in jobs:
            for z, result in track.run_segment(*segment, disagreement):
                yield track, z, result
        return
    passes = []  # (job, direction, track, pass)
    for index, (track, segment) in enumerate(jobs):
        if not track.view.object_ids:  # nothing to run: the track's empty results
            for z, result in track.run_segment(*segment):
                yield track, z, result
            continue
        passes += [(index, direction, track, spec)
                   for direction, spec in enumerate(track.passes(*segment))]
    waiting: dict[tuple[int, int], dict[int, PassOutput]] = {}  # (job, direction) -> z -> output
    for index, direction, track, spec in _run_passes(passes, threads):
        left, right = jobs[index][1][:2]
        if left is None or right is None:
            yield track, spec[0], track.one_way(spec[1])
            continue
        z, output = spec
        other = waiting.setdefault((index, 1 - direction), {}).pop(z, None)
        if other is None:
            waiting.setdefault((index, direction), {})[z] = to_cpu_half(output)
            continue
        other = from_cpu_half(other, output)
        forward, backward = (output, other) if direction == 0 else (other, output)
        yield track, z, track.both_ways(z, forward, backward, left, right, disagreement)


def _run_passes(passes: list[tuple[int, int, Track, tuple]], threads: int
                ) -> Iterator[tuple[int, int, Track, tuple[int, PassOutput]]]:
    """``(job, direction, track, (z, output))`` of every slice of the ``passes`` ((job,
    direction, track, (start, other, slices))), run on up to ``threads`` threads."""
    todo, results, stop = deque(passes), queue.SimpleQueue(), threading.Event()
    finished = object()

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    index, direction, track, spec = todo.popleft()
                except IndexError:
                    return
                for item in track.run_pass(*spec):
                    if stop.is_set():
                        return
                    results.put((index, direction, track, item))
        except BaseException as error:  # raised again where the results are read
            results.put(error)
        finally:
            results.put(finished)

    workers = [threading.Thread(target=work, name=f"slicevos-pass{i}", daemon=True)
               for i in range(min(threads, len(passes)))]
    for worker in workers:
        worker.start()
    try:
        running = len(workers)
        while running:
            item = results.get()
            if item is finished:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for worker in workers:
            worker.join()


class SendInline:
    """A generator driven with ``send``, lazily: it runs only when :meth:`result` asks, and
    is then primed (``next``, its value dropped, the first time) and given every value sent
    since, in order; :meth:`result` is what the last of them gave. What it computes is what
    it would have computed value by value; what is never asked for is never computed. The
    one-thread form of :class:`SendAhead`."""

    def __init__(self, generator: Generator[Any, Any, None]) -> None:
        self._generator = generator
        self._primed = False
        self._waiting: list[Any] = []
        self._last: Any = None

    def send(self, value: Any) -> None:
        self._waiting.append(value)

    def result(self) -> Any:
        if not self._primed:
            next(self._generator)
            self._primed = True
        for value in self._waiting:
            self._last = self._generator.send(value)
        self._waiting.clear()
        return self._last

    def close(self) -> None:
        self._waiting.clear()
        self._generator.close()


class SendAhead(SendInline):
    """:class:`SendInline` on a thread of its own, eagerly: priming and each :meth:`send` run
    there while the caller goes on; :meth:`result` waits for the value of the last send and
    raises what the generator raised. :meth:`close` stops the thread (the generator is
    closed there)."""

    _stop = object()

    def __init__(self, generator: Generator[Any, Any, None], name: str) -> None:
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sent = self._received = 0
        self._last: Any = None
        self._thread = threading.Thread(target=self._run, args=(generator,), name=name,
                                        daemon=True)
        self._thread.start()

    def _run(self, generator: Generator[Any, Any, None]) -> None:
        try:
            next(generator)
            while (value := self._inbox.get()) is not self._stop:
                self._outbox.put((True, generator.send(value)))
        except BaseException as error:  # raised again by result
            self._outbox.put((False, error))
        finally:
            generator.close()

    def send(self, value: Any) -> None:
        self._inbox.put(value)
        self._sent += 1

    def result(self) -> Any:
        while self._received < self._sent:
            ok, value = self._outbox.get()
            self._received += 1
            if not ok:
                raise value
            self._last = value
        return self._last

    def close(self) -> None:
        self._inbox.put(self._stop)
        self._thread.join()
        self.result()  # raise what the generator raised that no result reported
