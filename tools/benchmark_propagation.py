"""Shim for ``slicevos-benchmark-propagation``; see slicevos/cli/benchmark_propagation.py."""
import sys

from slicevos.cli.benchmark_propagation import main

if __name__ == "__main__":
    sys.exit(main())
