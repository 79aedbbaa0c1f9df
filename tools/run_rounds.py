"""Shim for ``slicevos-run-rounds``; see slicevos/cli/run_rounds.py."""
import sys

from slicevos.cli.run_rounds import main

if __name__ == "__main__":
    sys.exit(main())
