"""Shim for ``slicevos-benchmark-reference``; see slicevos/cli/benchmark_reference.py."""
import sys

from slicevos.cli.benchmark_reference import main

if __name__ == "__main__":
    sys.exit(main())
