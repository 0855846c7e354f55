"""Smoke test of ``benchmarks/pc_step.py`` (issue 14's table): the script runs in its quickest
mode on the smallest model and writes its table and JSON; and of ``guard_overhead.py`` (issue
21). No timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "pc_step.py"


def _run(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "pc_step.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_pc_step_quick_eager_table_and_json(tmp_path):
    stdout, d = _run(tmp_path, "--models", "mlp", "--rules", "zil,il", "--no-compile")
    assert "| model" in stdout and "paired x bp" in stdout and "issue 14 pccompile" in stdout
    rows = {r["row"]: r for r in d["rows"]}
    assert set(rows) == {"bp", "zil", "il T=5 eager", "il T=10 eager", "il T=20 eager"}
    for r in rows.values():
        assert r["available"] and r["n"] == 3 and r["median_ms"] > 0
    assert rows["bp"]["ratio_bp"] == 1.0
    assert rows["il T=20 eager"]["target"] == 4.0 and rows["il T=20 eager"]["met"] in (True, False)
    assert d["models"][0]["depth_il"] == 3 and d["loadavg_start"] is not None
    # --report prints the saved run again
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--report", str(tmp_path / "pc_step.json")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "il T=20 eager" in again.stdout


@pytest.mark.slow
def test_pc_step_quick_compiled_row(tmp_path):
    """A compiled row with the fast-compiling aot_eager backend: compile time reported apart."""
    _, d = _run(tmp_path, "--models", "mlp", "--rules", "il", "--backend", "aot_eager")
    rows = {r["row"]: r for r in d["rows"]}
    row = rows["il T=5 compiled:aot_eager"]
    assert row["available"] and row["compile_s"] > 0 and row["n"] == 3


def test_guard_overhead_quick_run(tmp_path):
    """``benchmarks/guard_overhead.py`` runs, writes its JSON, and a loop that changes nothing
    made no new capture (the script asserts it)."""
    out = tmp_path / "guards.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "guard_overhead.py"),
            "--rounds",
            "4",
            "--samples",
            "3",
            "--inner",
            "10",
            "--skip-resnet",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["guarded_modules"] == 6 and row["check"]["median_s"] > 0
    assert "check/learn" in proc.stdout
