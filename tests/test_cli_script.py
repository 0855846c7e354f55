"""The installed ``pccompile`` console script, run as a user runs it: a subprocess started from
another folder (never the repository), reading its own stdout, stderr and exit code.

The script is the one installed next to this interpreter (``make test``'s ``.venv/bin``); the
tests skip when there is none. Each run pays Python's start-up, so every test here is one or two
runs of a small model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SCRIPT = Path(sys.executable).with_name("pccompile")

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="no installed pccompile script")


def script(
    *argv: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the console script in ``cwd``; the environment is this one's plus ``env``."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [str(SCRIPT), *argv],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def blocking(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which ``modules`` cannot be imported, as if not installed."""
    blocker = tmp_path / "_blocked"
    for name in modules:
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"raise ImportError({f'No module named {name!r} (blocked by the test)'!r})\n"
        )
    path = os.pathsep.join(p for p in [str(blocker), os.environ.get("PYTHONPATH", "")] if p)
    return {"PYTHONPATH": path}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------- missing extras
@pytest.mark.parametrize("blocked", ["onnxruntime", "onnx"])
def test_export_without_the_onnx_extra_fails_fast_naming_it(tmp_path, blocked):
    work = tmp_path / "work"
    work.mkdir()
    start = time.perf_counter()
    env = blocking(tmp_path, blocked)
    proc = script("export", "torchvision:resnet18", "-o", "r18.onnx", cwd=work, env=env)
    took = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert blocked in line and "pip install 'pccompile[onnx]'" in line, line
    assert "internal error" not in line
    assert list(work.iterdir()) == []
    assert took < 15, f"took {took:.1f} s: the model was built before the check"
