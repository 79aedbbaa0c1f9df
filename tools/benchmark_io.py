"""Shim for ``slicevos-benchmark-io``; see slicevos/cli/benchmark_io.py."""
import sys

from slicevos.cli.benchmark_io import main

if __name__ == "__main__":
    sys.exit(main())
