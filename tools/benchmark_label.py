"""Shim for ``slicevos-benchmark-label``; see slicevos/cli/benchmark_label.py."""
import sys

from slicevos.cli.benchmark_label import main

if __name__ == "__main__":
    sys.exit(main())
