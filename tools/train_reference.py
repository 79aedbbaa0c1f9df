"""Shim for ``slicevos-train-reference``; see slicevos/cli/train_reference.py."""
import sys

from slicevos.cli.train_reference import main

if __name__ == "__main__":
    sys.exit(main())
