"""Shim for ``slicevos-benchmark-effort``; see slicevos/cli/benchmark_effort.py."""
import sys

from slicevos.cli.benchmark_effort import main

if __name__ == "__main__":
    sys.exit(main())
