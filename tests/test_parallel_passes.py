"""Passes on threads (``slicevos.inference.parallel``): the flow engine runs the passes of a
session's segments on ``FlowSettings.threads`` threads; the labels, the counts and the
uncertainty are those of one thread, closing the propagation stops the threads, an error in
a pass reaches the caller, and concurrent passes compute each flow once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from slicevos.inference.engines.flow import engine as flow_engine
from slicevos.inference.engines.flow.engine import FlowConfig, FlowPropagator
from slicevos.inference.engines.flow.field import FlowFields, FlowSettings
from slicevos.phantom import PhantomConfig, make_phantom
from slicevos.preprocessing.windowing import window_volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7, PhantomConfig(shape=(30, 64, 64)))


def organs(phantom) -> list[int]:
    return [int(o) for o in np.unique(phantom.labels) if o][:3]


def session_on(phantom, threads: int, cache_mb: float = 0.0):
    propagator = FlowPropagator(FlowConfig(flow=FlowSettings(threads=threads),
                                           flow_cache_mb=cache_mb))
    return propagator.start(window_volume(phantom.to_volume().hu, propagator.windows))


def draw(session, truth: np.ndarray, organ: int, z: int) -> None:
    session.add_object_mask(z, organ, truth[z] == organ)


def corrections(phantom, session) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Each organ on its middle slice, then two corrections each (per-organ keys: one track
    per organ, passes of every kind); after each propagation: labels, uncertainty, slices
    decoded so far."""
    truth = phantom.labels
    steps = []
    for organ in organs(phantom):
        extent = np.flatnonzero((truth == organ).any(axis=(1, 2)))
        draw(session, truth, organ, int(np.median(extent)))
    for round_ in range(3):
        session.run()
        steps.append((session.labels.copy(), session.slice_uncertainty.copy(),
                      session.stats.decoded_slices))
        if round_ == 2:
            break
        for organ in organs(phantom):
            extent = np.flatnonzero((truth == organ).any(axis=(1, 2)))
            draw(session, truth, organ, int(extent[[1, -2][round_]]))
    return steps


@pytest.mark.parametrize("cache_mb, opinion_thread", [(0.0, False), (64.0, False),
                                                     (64.0, True)])
def test_passes_on_threads_give_what_one_thread_gives(phantom, monkeypatch, cache_mb: float,
                                                       opinion_thread: bool) -> None:
    """The second opinions beside their pass, or on a thread of their own (where a core is
    left for them), give the same too."""
    monkeypatch.setattr(flow_engine, "opinion_thread", lambda threads: opinion_thread)
    one = corrections(phantom, session_on(phantom, 1, cache_mb))
    two = corrections(phantom, session_on(phantom, 2, cache_mb))
    assert one[0][0].any()
    for (labels_1, doubt_1, decoded_1), (labels_2, doubt_2, decoded_2) in zip(
            one, two, strict=True):
        np.testing.assert_array_equal(labels_2, labels_1)
        np.testing.assert_array_equal(doubt_2, doubt_1)  # NaN where not done: none here
        assert decoded_2 == decoded_1


def test_closing_the_propagation_stops_its_threads_and_the_rest_is_redone(phantom) -> None:
    truth = phantom.labels
    expected = session_on(phantom, 1)
    session = session_on(phantom, 2)
    for target in (expected, session):
        for organ in organs(phantom):
            draw(target, truth, organ, 10)
            draw(target, truth, organ, 20)
    steps = session.propagate()
    next(steps)
    steps.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("slicevos-pass")]
    assert np.isnan(session.slice_uncertainty).any()  # what was not finished is out of date
    np.testing.assert_array_equal(session.run(), expected.run())


def test_an_error_in_a_pass_on_a_thread_reaches_the_caller(phantom, monkeypatch) -> None:
    truth = phantom.labels
    session = session_on(phantom, 2)
    for organ in organs(phantom):
        draw(session, truth, organ, 15)
    track = session.tracks[-1]

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("pass failed")

    monkeypatch.setattr(track.engine, "run_pass", broken)
    with pytest.raises(RuntimeError, match="pass failed"):
        session.run()
    assert not [t for t in threading.enumerate() if t.name.startswith("slicevos-pass")]


def test_concurrent_passes_compute_each_flow_once(phantom) -> None:
    """Two threads asking for the same flows at once: each is computed once (the other
    thread waits for it), and both get the same (fixed-point) values."""
    propagator = FlowPropagator()
    stack = np.ascontiguousarray(window_volume(phantom.to_volume().hu,
                                               propagator.windows)[:, 0])
    flows = FlowFields(stack, FlowSettings(threads=2), cache_mb=64)
    pairs = [(z, z - 1) for z in range(1, 30)]
    got: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(2)

    def ask(name: int) -> None:
        flows.prefetch(pairs)
        start.wait()
        got[name] = [flows.flow(*pair) for pair in pairs]
        flows.prefetch(())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert flows.computed == len(pairs) == len(flows._kept)
    for first, second in zip(got[0], got[1], strict=True):
        assert first.dtype == np.int16
        np.testing.assert_array_equal(first, second)
