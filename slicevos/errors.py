"""Errors and warnings about user input.

Every message is one line that names the file, says what is wrong (with the values) and how to
fix it, e.g. ``scan.nii.gz: image has 2 dimensions, expected a 3D volume. Fix: pass a 3D CT
volume (one file per scan).``
"""

from __future__ import annotations

import warnings
from os import PathLike


class InputError(ValueError):
    """Bad input data or files. ``str(err)`` is the one-line user-facing message."""

    def __init__(self, path: str | PathLike | None, problem: str, fix: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")

    def __reduce__(self) -> tuple:
        # picklable, so an error raised in a worker process reaches the parent intact
        return (type(self), (self.path, self.problem, self.fix))


class InputWarning(UserWarning):
    """Input that is readable but looks suspicious (e.g. intensities that are not HU)."""


def warn_input(path: str | PathLike | None, problem: str, fix: str) -> None:
    """Warn with the one-line form of the errors: ``FILE: problem. Fix: fix`` (the tools print
    it as ``warning: ...``, see :func:`show_input_warnings`)."""
    where = f"{path}: " if path else ""
    warnings.warn(f"{where}{problem}. Fix: {fix}", InputWarning, stacklevel=3)


def show_input_warnings() -> None:
    """Format every ``InputWarning`` from now on as one line, ``warning: FILE: problem. Fix:
    ...``, without Python's module path and source line; other warnings keep Python's format.
    Only the format changes: filters, and tools that record warnings, work as before."""
    default = warnings.formatwarning
    if getattr(default, "slicevos_one_line", False):
        return

    def one_line(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, InputWarning):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    one_line.slicevos_one_line = True
    warnings.formatwarning = one_line
