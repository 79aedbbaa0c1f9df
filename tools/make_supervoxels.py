"""Shim for ``slicevos-make-supervoxels``; see slicevos/cli/make_supervoxels.py."""
import sys

from slicevos.cli.make_supervoxels import main

if __name__ == "__main__":
    sys.exit(main())
