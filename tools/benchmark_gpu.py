"""Shim for ``slicevos-benchmark-gpu``; see slicevos/cli/benchmark_gpu.py."""
import sys

from slicevos.cli.benchmark_gpu import main

if __name__ == "__main__":
    sys.exit(main())
