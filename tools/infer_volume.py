"""Shim for ``slicevos-infer``; see slicevos/cli/infer_volume.py."""
import sys

from slicevos.cli.infer_volume import main

if __name__ == "__main__":
    sys.exit(main())
