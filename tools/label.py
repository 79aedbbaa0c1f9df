"""Shim for ``slicevos-label``; see slicevos/cli/label.py."""
import sys

from slicevos.cli.label import main

if __name__ == "__main__":
    sys.exit(main())
