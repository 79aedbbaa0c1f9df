"""Shim for ``slicevos-train-localizer``; see slicevos/cli/train_localizer.py."""
import sys

from slicevos.cli.train_localizer import main

if __name__ == "__main__":
    sys.exit(main())
