"""The installed ``pccompile`` console script, run as a user runs it: a subprocess started from
another folder (never the repository), reading its own stdout, stderr and exit code.

The script is the one installed next to this interpreter (``make test``'s ``.venv/bin``); the
tests skip when there is none. Each run pays Python's start-up, so every test here is one or two
runs of a small model.
"""

from __future__ import annotations

import os
import signal
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


# ------------------------------------------------------------------------- start-up and habits
def test_help_is_fast_and_shows_examples_and_defaults(tmp_path):
    best = min(_timed(script, "--help", cwd=tmp_path) for _ in range(3))
    proc = script("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "exit codes" in proc.stdout
    assert "docs/cli.md" not in proc.stdout  # not in the wheel
    assert best < 1.5, f"pccompile --help took {best:.2f} s"
    sub = script("verify", "--help", cwd=tmp_path)
    assert "(default: zil)" in sub.stdout and "(default: float32)" in sub.stdout
    assert "pccompile verify torchvision:resnet18" in sub.stdout and "-v, --verbose" in sub.stdout


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    proc = fn(*args, **kwargs)
    assert proc.returncode == 0, proc.stderr
    return time.perf_counter() - start


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
    full = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(SCRIPT), "verify", "torchvision:resnet18", "-q"],
        cwd=tmp_path,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.8)  # inside the start-up: torch is being imported
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "interrupted" in err


def test_a_closed_stdout_is_not_a_failure(tmp_path):
    # `| true` closes the pipe at once: every write fails with EPIPE, as `| head` does later
    cmd = f"set -o pipefail; {SCRIPT} verify {FIXTURES / 'other_factories.py'}:make_mlp "
    cmd += "--input-shape 3,4 | true"
    proc = subprocess.run(
        ["bash", "-c", cmd],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_package_module_factory_resolves_from_the_current_folder(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch.nn as nn\n\nINPUT_SHAPE = (3, 4)\n\n\n"
        "def make_mlp():\n    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))\n"
    )
    proc = script("inspect", "mypkg.nets:make_mlp", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mypkg.nets:make_mlp: 5 vertices")


def test_completion_script_lists_the_commands_and_choices(tmp_path):
    proc = script("completion", "bash", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "complete -o filenames -F _pccompile pccompile" in text
    for word in ("convert verify inspect export completion", "zil fpa il ipc", "--leaf-module"):
        assert word in text
    check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
