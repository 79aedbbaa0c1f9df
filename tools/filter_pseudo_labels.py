"""Shim for ``slicevos-filter-pseudo-labels``; see slicevos/cli/filter_pseudo_labels.py."""
import sys

from slicevos.cli.filter_pseudo_labels import main

if __name__ == "__main__":
    sys.exit(main())
