"""Shim for ``slicevos-train-propagation``; see slicevos/cli/train_propagation.py."""
import sys

from slicevos.cli.train_propagation import main

if __name__ == "__main__":
    sys.exit(main())
