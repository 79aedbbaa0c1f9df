"""The labelling session behind the page: one scan, its propagation session, drawing with undo,
propagation in a background thread, autosave and save.

Concurrency: every change of the propagation session (an edit, a propagation step, save)
holds :attr:`Labeler.lock`. The propagation thread takes it one finished slice at a time, so
an edit waits at most for one step; an edit during propagation stops the run, applies, and
starts it again. Reads (slice PNGs, status) take no lock: they copy one slice or small
per-slice arrays, and a slice caught mid-update is simply fetched again at its next revision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from slicevos.errors import InputError
from slicevos.inference.reporting.preview import organ_colours
from slicevos.inference.reporting.report import uncertainty_list
from slicevos.inference.session import PropagationSession
from slicevos.inference.suggestions import suggest_every_list, suggest_slices
from slicevos.io.dicom_seg import SegSource, dicom_seg_path, save_dicom_seg, seg_source_for
from slicevos.io.labels import LabelSchema
from slicevos.io.nifti import save_labels
from slicevos.io.volume import Geometry
from slicevos.labeler import edits
from slicevos.labeler.render import DISPLAY_WINDOWS, VIEWS
from slicevos.labeler.sidecar import Sidecar

UNDO_DEPTH = 200
FLOW_CACHE_MB = 1024  # flows kept for re-propagation: 512x512x150 needs ~75 MB (at the maps'
# nodes, every 2nd pixel; ~300 MB where the flow is kept at every pixel)


@dataclass
class Edit:
    """What undo restores: slice ``z``'s keys before the edit (its whole-slice labels or
    None, and its per-organ masks; see ``PropagationSession.keys_of_slice``)."""

    z: int
    whole_before: np.ndarray | None
    organs_before: dict[int, np.ndarray]


def hu_int16(hu: np.ndarray) -> np.ndarray:
    """HU as int16 (half the memory of float32; CT values are whole HU)."""
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


class Labeler:
    """One scan being labelled. ``image``: the propagator's windowed uint8 (D, C, H, W);
    ``hu``: the canonical HU volume (int16 is enough) for display; ``start_keys``: the key
    slices of ``--labels``; ``keys``: the ones to begin with (autosaved ones when resuming);
    ``seg_source``: the DICOM series a DICOM-SEG is saved over (None: no DICOM-SEG)."""

    def __init__(self, hu: np.ndarray, geometry: Geometry, image: np.ndarray, propagator: Any,
                 schema: LabelSchema, output: Path, sidecar: Sidecar,
                 start_keys: Mapping[int, np.ndarray], keys: Mapping[int, np.ndarray],
                 resumed: bool, scan_name: str,
                 organ_keys: Mapping[int, Mapping[int, np.ndarray]] | None = None,
                 seg_source: SegSource | None = None) -> None:
        self.hu, self.geometry, self.image = hu, geometry, image
        self.seg_source = seg_source
        self.propagator, self.schema = propagator, schema
        self.output, self.sidecar = Path(output), sidecar
        self.start_keys = dict(start_keys)
        self.scan_name = scan_name
        organ_keys = organ_keys or {}
        self.resumed = (len(keys) + sum(map(len, organ_keys.values()))) if resumed else 0
        self.depth = int(hu.shape[0])
        self.lock = threading.RLock()
        self.revisions = np.zeros(self.depth, np.int64)
        self.undo_stack: list[Edit] = []
        self.progress: dict[str, Any] = {"done": 0, "total": 0, "seconds": None}
        self.error: str | None = None
        self.last_save: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._ahead: threading.Thread | None = None
        self._stop_ahead = threading.Event()
        self.session = self._new_session(keys, organ_keys)
        for z, labels in keys.items():
            if not resumed:
                self.sidecar.write_key(z, labels)
        self.sidecar.write_state(output=str(self.output))

    # -- session -------------------------------------------------------------------------

    def _new_session(self, keys: Mapping[int, np.ndarray],
                     organ_keys: Mapping[int, Mapping[int, np.ndarray]] | None = None
                     ) -> PropagationSession:
        session = self.propagator.start(self.image)
        for z in sorted(keys):
            session.add_mask(int(z), keys[z])
        for organ, masks in sorted((organ_keys or {}).items()):
            for z, mask in sorted(masks.items()):
                session.add_object_mask(int(z), int(organ), mask)
        self.keys = tuple(session.any_key_slices)
        return session

    @property
    def has_keys(self) -> bool:
        return bool(self.session.key_masks) or any(self.session.organ_keys.values())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> bool:
        """Stop a running propagation (after its current step); True if one was running."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        self._cancel.set()
        thread.join()
        return True

    @contextmanager
    def _editing(self) -> Iterator[None]:
        """Hold the lock for a change; a propagation that was running restarts after it."""
        was_running = self.stop()
        try:
            with self.lock:
                yield
        finally:
            if was_running and self.has_keys:
                self.start_propagation()

    def start_propagation(self) -> dict[str, Any]:
        """Propagate every out-of-date slice in a background thread (no-op if running)."""
        with self.lock:
            if self.running:
                return self.status()
            if not self.has_keys:
                raise InputError(None, "no key slice to propagate from",
                                 "draw an organ on at least one axial slice first")
            self._stop_work_ahead()
            todo = self.session.pending_slices()
            self.progress = {"done": 0, "total": todo, "seconds": None}
            self.error = None
            self._cancel.clear()
            self._thread = threading.Thread(target=self._propagate, name="slicevos-propagate",
                                            daemon=True)
            self._thread.start()
        return self.status()

    def _propagate(self) -> None:
        started = time.perf_counter()
        steps = self.session.propagate()
        try:
            while not self._cancel.is_set():
                with self.lock:
                    step = next(steps, None)
                    if step is None:
                        break
                    self.revisions[step[0]] += 1
                    self.progress["done"] += 1
        except Exception as err:  # shown on the page; the server goes on
            self.error = (str(err) if isinstance(err, InputError)
                          else f"propagation failed: {type(err).__name__}: {err}")
        finally:
            with self.lock:
                steps.close()
            if not self._cancel.is_set():
                self.progress["seconds"] = round(time.perf_counter() - started, 3)
                if self.error is None:
                    self._start_work_ahead()

    def _start_work_ahead(self) -> None:
        """While the user looks and draws, let the session work ahead of the next
        correction (``PropagationSession.work_ahead``: the flow engine computes the flows a new
        key will need) in a background thread that the next propagation stops first."""
        self._stop_ahead.clear()
        self._ahead = threading.Thread(target=self.session.work_ahead, args=(self._stop_ahead,),
                                       name="slicevos-work-ahead", daemon=True)
        self._ahead.start()

    def _stop_work_ahead(self) -> None:
        if self._ahead is not None:
            self._stop_ahead.set()
            self._ahead.join()
            self._ahead = None

    def wait_work_ahead(self, timeout: float | None = None) -> None:
        """Block until the work ahead of the next correction is done (what a user's time
        to look and draw gives it)."""
        thread = self._ahead
        if thread is not None:
            thread.join(timeout)

    # -- edits ---------------------------------------------------------------------------

    def stroke(self, body: Any) -> dict[str, Any]:
        """Apply a brush or eraser stroke (see ``slicevos.labeler.edits``)."""
        body = edits.check_fields(body, ("z", "label", "tool", "radius", "points"))
        z = edits.check_int(body["z"], "z", 0, self.depth - 1)
        label = self._check_label(body["label"])
        if body["tool"] not in edits.TOOLS:
            raise InputError(None, f"unknown tool {body['tool']!r:.30}",
                             f"use one of {', '.join(edits.TOOLS)}")
        radius = edits.check_int(body["radius"], "radius", 0, edits.MAX_RADIUS)
        height, width = self.hu.shape[1:]
        points = edits.check_points(body["points"], width, height, radius)
        return self._apply(z, lambda labels: edits.paint_stroke(
            labels, points, radius, label, body["tool"] == "eraser"), organ=label)

    def fill(self, body: Any) -> dict[str, Any]:
        """Flood-fill the clicked region of an axial slice with an organ."""
        body = edits.check_fields(body, ("z", "label", "x", "y"))
        z = edits.check_int(body["z"], "z", 0, self.depth - 1)
        label = self._check_label(body["label"])
        height, width = self.hu.shape[1:]
        x = edits.check_int(body["x"], "x", 0, width - 1)
        y = edits.check_int(body["y"], "y", 0, height - 1)
        return self._apply(z, lambda labels: edits.flood_fill(labels, x, y, label), organ=label)

    def accept(self, body: Any) -> dict[str, Any]:
        """Make an axial slice a key as it is shown ("this slice is done"), an empty one too:
        an empty key tells propagation the organs end there."""
        body = edits.check_fields(body, ("z",))
        z = edits.check_int(body["z"], "z", 0, self.depth - 1)
        return self._apply(z, lambda labels: labels.copy())

    def organ_end(self, body: Any) -> dict[str, Any]:
        """Mark organ ``label`` absent on axial slice ``z`` (the "ends here" of the extent
        control): an empty key for that organ only, so it stops there and the other organs
        stay propagated. Two of them, one past each end, give the organ's z-range."""
        body = edits.check_fields(body, ("z", "label"))
        z = edits.check_int(body["z"], "z", 0, self.depth - 1)
        label = self._check_label(body["label"])
        return self._apply(z, lambda labels: np.where(labels == label, 0, labels).astype(
            labels.dtype), organ=label)

    def paint_organ(self, z: int, label: int, mask: np.ndarray) -> dict[str, Any]:
        """Redraw organ ``label`` on axial slice ``z`` as ``mask`` (H, W) bool: what a user
        who corrects one organ there does (the simulated annotator calls this)."""
        z = edits.check_int(z, "z", 0, self.depth - 1)
        label = self._check_label(label)
        mask = self._check_plane(mask, "organ mask").astype(bool)

        def redraw(labels: np.ndarray) -> np.ndarray:
            out = labels.copy()
            out[out == label] = 0
            out[mask] = label
            return out
        return self._apply(z, redraw, organ=label)

    def paint_slice(self, z: int, labels: np.ndarray) -> dict[str, Any]:
        """Make axial slice ``z`` a key with ``labels`` (H, W) for every organ."""
        z = edits.check_int(z, "z", 0, self.depth - 1)
        labels = self._check_plane(labels, "slice labels").astype(np.uint8)
        return self._apply(z, lambda _: labels.copy())

    def _check_plane(self, plane: np.ndarray, what: str) -> np.ndarray:
        plane = np.asarray(plane)
        if plane.shape != self.hu.shape[1:]:
            raise InputError(None, f"{what} has shape {plane.shape}, expected "
                             f"{self.hu.shape[1:]}", "pass one axial slice")
        return plane

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the running propagation (if any) has finished; its status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def _check_label(self, value: Any) -> int:
        label = edits.check_int(value, "label", 1, 255)
        if label not in self.schema.ids:
            raise InputError(None, f"label {label} is not in schema {self.schema.name}",
                             "pick an organ from the list")
        return label

    def _apply(self, z: int, change: Callable[[np.ndarray], np.ndarray],
               organ: int | None = None) -> dict[str, Any]:
        """Apply ``change`` to the labels shown on slice ``z``. With ``organ``, the result for
        that organ becomes its own key on ``z`` (the other organs there stay propagated);
        without, the whole slice becomes a key."""
        with self._editing():
            whole, organs = self.session.keys_of_slice(z)
            after = change(self.session.labels[z].copy())
            if organ is None:
                if whole is not None and np.array_equal(after, whole):
                    return self.status()
                self.session.add_mask(z, after)
            else:
                mask = after == organ
                current = (whole == organ) if whole is not None else organs.get(organ)
                if current is not None and np.array_equal(current, mask):
                    return self.status()
                self.session.add_object_mask(z, organ, mask)
            self._keys_changed(z)
            self.undo_stack = [*self.undo_stack[-UNDO_DEPTH + 1:], Edit(z, whole, organs)]
        return self.status()

    def _keys_changed(self, z: int) -> None:
        self.sidecar.write_slice_keys(z, *self.session.keys_of_slice(z))  # before returning
        self.keys = tuple(self.session.any_key_slices)
        self.revisions[z] += 1

    def undo(self) -> dict[str, Any]:
        """Undo the last edit: restore the keys its slice had before."""
        with self._editing():
            if not self.undo_stack:
                raise InputError(None, "nothing to undo", "draw something first")
            edit = self.undo_stack.pop()
            self.session.set_keys_of_slice(edit.z, edit.whole_before, edit.organs_before)
            self._keys_changed(edit.z)
        return self.status()

    def discard(self) -> dict[str, Any]:
        """Forget the autosaved keys and every drawing: back to the ``--labels`` keys."""
        with self._editing():
            self._stop_work_ahead()  # it works on the session that is dropped
            self.sidecar.discard()
            for z, labels in self.start_keys.items():
                self.sidecar.write_key(z, labels)
            self.session = self._new_session(self.start_keys)
            self.keys = tuple(self.session.any_key_slices)
            self.undo_stack = []
            self.resumed = 0
            self.revisions += 1
        return self.status()

    # -- save ----------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """Write the labels in the scan's own geometry with the JSON label map (atomic); the
        map lists the key slices, empty ones too, so ``slicevos-infer --keys`` and
        ``slicevos-label --labels`` given the saved file use the same keys. With a
        ``seg_source`` the DICOM-SEG ``<out>_seg.dcm`` follows (none while no organ is drawn)."""
        with self.lock:
            started = time.perf_counter()
            pending = int((~self.session.up_to_date).sum())
            labels = self.session.labels
            path = save_labels(labels, self.geometry, self.output, self.schema,
                               key_slices=self.keys)
            seg = (save_dicom_seg(labels, self.seg_source, dicom_seg_path(self.output),
                                  self.schema) if self.seg_source is not None else None)
            seconds = round(time.perf_counter() - started, 3)
            self.last_save = {"path": str(Path(path).resolve()), "seconds": seconds,
                              "pending_slices": pending, "at": time.strftime("%H:%M:%S"),
                              "dicom_seg": None if seg is None else str(seg.resolve())}
            self.sidecar.write_state(output=str(self.output), last_save=self.last_save)
        return self.last_save

    def close(self) -> None:
        """Stop propagating and write the final session state (the keys are on disk)."""
        self.stop()
        self._stop_work_ahead()
        with self.lock:
            self.sidecar.write_state(output=str(self.output),
                                     closed=time.strftime("%Y-%m-%dT%H:%M:%S"))

    # -- what the page reads -------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        colours = organ_colours(self.schema)
        depth, height, width = self.hu.shape
        return {
            "scan": self.scan_name, "output": str(self.output.resolve()),
            "sidecar": str(self.sidecar.folder.resolve()),
            "shape": [depth, height, width], "spacing": list(self.geometry.spacing),
            "schema": self.schema.name, "engine": self.propagator.name,
            "organs": [{"id": c.id, "name": c.name, "colour": list(colours[c.id])}
                       for c in self.schema.classes],
            "views": list(VIEWS), "windows": list(DISPLAY_WINDOWS), "resumed": self.resumed,
        }

    def suggestions(self, label: int | None = None, k: int = 8) -> list[int]:
        """The slices to check next, best first (the page's "check next" list); ``label``:
        for that organ (None: any organ)."""
        return suggest_slices(self.session, label, k)

    def status(self) -> dict[str, Any]:
        session = self.session
        uncertainty = session.slice_uncertainty.copy()
        keys = self.keys
        check, per_organ = suggest_every_list(session)
        return {
            "keys": list(keys), "whole_keys": session.key_slices, "running": self.running,
            "organ_keys": {str(o): sorted(m) for o, m in session.organ_keys.items() if m},
            "check_next_organ": {str(o): checks for o, checks in per_organ.items()},
            "progress": dict(self.progress),
            "up_to_date": "".join("1" if v else "0" for v in session.up_to_date.tolist()),
            "uncertainty": uncertainty_list(uncertainty), "check_next": check,
            "revisions": self.revisions.tolist(), "error": self.error,
            "last_save": self.last_save, "undo": len(self.undo_stack), "resumed": self.resumed,
        }


def open_labeler(scan: str | PathLike, output: str | PathLike, schema: LabelSchema,
                 engine: str = "flow", checkpoint: str | PathLike | None = None,
                 start_labels: str | PathLike | None = None,
                 dicom_seg: bool | None = None) -> Labeler:
    """Read the scan (NIfTI or DICOM folder), the ``--labels`` keys and the checkpoint, and
    resume the autosaved session beside ``output`` if there is one. Raises InputError with
    the project's one-line messages for anything broken. ``dicom_seg``: save a DICOM-SEG too
    (True: required; None: for a DICOM series when it can, see ``seg_source_for``)."""
    from slicevos.inference.engines import build_propagator
    from slicevos.inference.engines.flow.engine import FlowConfig
    from slicevos.inference.user_keys import read_key_slices
    from slicevos.io.loader import load_volume
    from slicevos.labeler.sidecar import sidecar_folder
    from slicevos.preprocessing.windowing import window_volume

    scan, output = Path(scan), Path(output)
    propagator = build_propagator(engine, checkpoint,
                                  flow=FlowConfig(flow_cache_mb=FLOW_CACHE_MB))
    volume = load_volume(scan)
    seg_source = seg_source_for(volume, dicom_seg)
    start_keys = (read_key_slices(start_labels, volume, schema) if start_labels else {})
    image = window_volume(volume.hu, propagator.windows)
    hu = hu_int16(volume.hu)
    sidecar = Sidecar(sidecar_folder(output), scan.resolve(), volume.geometry, schema.name)
    saved, saved_organs = sidecar.load(), sidecar.load_organ_keys()
    resumed = bool(saved or saved_organs)
    return Labeler(hu, volume.geometry, image, propagator, schema, output, sidecar, start_keys,
                   saved if resumed else start_keys, resumed, scan.name, saved_organs,
                   seg_source)
