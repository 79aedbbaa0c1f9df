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


def warn_input(path: str | PathLike | None, problem: str, hint: str) -> None:
    where = f"{path}: " if path else ""
    warnings.warn(f"{where}{problem}. {hint}", InputWarning, stacklevel=3)
