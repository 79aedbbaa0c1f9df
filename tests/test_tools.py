"""Every console script resolves to a ``main(argv)``, every tools/ shim calls its cli module,
and the benchmark runs on a tiny phantom."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_console_scripts_and_shims_match():
    scripts = console_scripts()
    assert scripts, "setup.cfg lists no console scripts"
    modules = set()
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
        modules.add(module.rsplit(".", 1)[1])
    shims = {p.stem for p in (ROOT / "tools").glob("*.py")}
    assert modules == shims
    for name in shims:
        assert f"from slicevos.cli.{name} import main" in (ROOT / "tools" / f"{name}.py").read_text()


def test_shim_runs_help():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--help"],
                         capture_output=True, text=True, check=True)
    assert "PRED" in out.stdout.upper()


def test_benchmark_io_on_tiny_phantom(tmp_path, capsys):
    from slicevos.cli.benchmark_io import main

    code = main(["--data", str(tmp_path / "absent"), "--phantom-size", "64",
                 "--phantom-slices", "16", "--repeats", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "phantom_64x64x16" in out and "16x64x64" in out


def test_benchmark_propagation_smoke(capsys):
    from slicevos.cli.benchmark_propagation import main

    code = main(["--parts", "speed", "memory", "--configs", "tiny", "--sizes", "48", "--objects", "1", "2", "--depth", "3",
                 "--memory-config", "tiny", "--memory-size", "48", "--memory-depth", "8"])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 obj s/slice" in out and "8x48x48" in out


def test_benchmark_propagation_quality_baselines(real_data, capsys):
    from slicevos.cli.benchmark_propagation import main

    assert main(["--parts", "quality", "--data", str(real_data), "--key-steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "nearest copy" in out and "example_ct_sm30" in out and "ct3slice" not in out
