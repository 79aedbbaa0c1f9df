"""Shared pieces of the command-line tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from slicevos.errors import InputError


def run_cli(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run ``body(args)``; an ``InputError`` becomes a one-line message on
    stderr and exit code 2 (no traceback: the message says what to fix)."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(body(args) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
