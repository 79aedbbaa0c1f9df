"""Shim for ``slicevos-generate-pseudo-labels``; see slicevos/cli/generate_pseudo_labels.py."""
import sys

from slicevos.cli.generate_pseudo_labels import main

if __name__ == "__main__":
    sys.exit(main())
