"""Shim for ``slicevos-real-folds``; see slicevos/cli/real_folds.py."""
import sys

from slicevos.cli.real_folds import main

if __name__ == "__main__":
    sys.exit(main())
