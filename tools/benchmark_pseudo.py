"""Shim for ``slicevos-benchmark-pseudo``; see slicevos/cli/benchmark_pseudo.py."""
import sys

from slicevos.cli.benchmark_pseudo import main

if __name__ == "__main__":
    sys.exit(main())
