"""Shim for ``slicevos-convert-labels``; see slicevos/cli/convert_labels.py."""
import sys

from slicevos.cli.convert_labels import main

if __name__ == "__main__":
    sys.exit(main())
