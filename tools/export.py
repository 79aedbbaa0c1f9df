"""Shim for ``slicevos-export``; see slicevos/cli/export.py."""
import sys

from slicevos.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
