"""Shim for ``slicevos-make-phantoms``; see slicevos/cli/make_phantoms.py."""
import sys

from slicevos.cli.make_phantoms import main

if __name__ == "__main__":
    sys.exit(main())
