"""Shim for ``slicevos-benchmark-speed``; see slicevos/cli/benchmark_speed.py."""
import sys

from slicevos.cli.benchmark_speed import main

if __name__ == "__main__":
    sys.exit(main())
