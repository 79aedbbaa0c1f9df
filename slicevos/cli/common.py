"""Shared pieces of the command-line tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence

from slicevos.errors import InputError, show_input_warnings

# the propagation engines (slicevos.inference.engines.ENGINES), without importing torch for
# --help
PROPAGATORS = ("flow", "stcn", "guided", "fused")

DEBUG_ENV = "SLICEVOS_DEBUG"
# argparse destinations that name what a tool writes, not what it reads
OUTPUT_ARGS = frozenset({"out", "output", "out_dir", "out_dataset", "cache_dir", "csv"})


def run_cli(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run ``body(args)`` and turn failures into one line on stderr.

    An ``InputError`` prints its message and exits 2 (the message says what to fix). Any other
    exception prints ``error: <input>: unexpected <type>: <message>. Fix: ...`` naming the input
    involved and exits 1; ``--debug`` (added to every tool) or ``SLICEVOS_DEBUG=1`` shows the
    full traceback instead. Outputs are written atomically (``slicevos.io.atomic``), so a
    failure leaves no half-written file behind.
    """
    if not any("--debug" in action.option_strings for action in parser._actions):
        parser.add_argument("--debug", action="store_true",
                            help=f"on an unexpected error show the full traceback (or set "
                                 f"{DEBUG_ENV}=1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    show_input_warnings()
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    try:
        return int(body(args) or 0)
    except InputError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if debug:
            raise
        print(f"error: {unexpected_error(err, list(_input_paths(args)))}", file=sys.stderr)
        return 1


def unexpected_error(err: BaseException, inputs: Sequence[str]) -> InputError:
    """The one-line report of an unexpected exception: the file involved (the exception's own
    ``filename``, else a file or input named in its message, else the command's inputs), the
    exception type and first message line, and where to get the traceback."""
    lines = str(err).strip().splitlines()
    message = lines[0][:300] if lines else "(no message)"
    named = next((str(e.filename) for e in _chain(err) if getattr(e, "filename", None)), None)
    named = named or next((p for p in _paths_in(str(err)) if os.path.isfile(p)), None)
    named = named or next((p for p in inputs if p in str(err)), None)
    where = named or ", ".join(inputs[:4]) or None
    return InputError(where, f"unexpected {type(err).__name__}: {message}",
                      "check that the inputs are complete files of the expected kind; run again "
                      f"with --debug (or {DEBUG_ENV}=1) for the full traceback")


def _paths_in(text: str) -> Iterator[str]:
    for token in text.split():
        yield token.strip("'\"`()[]{}<>,;:")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _input_paths(args: argparse.Namespace) -> Iterator[str]:
    """The existing files and folders among the parsed arguments (outputs left out)."""
    for name, value in vars(args).items():
        if name in OUTPUT_ARGS:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str | os.PathLike) and str(item) and os.path.exists(item):
                yield str(item)
