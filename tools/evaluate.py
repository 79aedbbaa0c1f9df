"""Shim for ``slicevos-evaluate``; see slicevos/cli/evaluate.py."""
import sys

from slicevos.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
