"""Shim for ``slicevos-prepare-data``; see slicevos/cli/prepare_data.py."""
import sys

from slicevos.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
