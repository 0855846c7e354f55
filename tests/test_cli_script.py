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
def recording_factory(folder: Path) -> tuple[str, Path]:
    """A MODEL spec whose factory leaves a file behind when it is called, and that file: a
    command that checks an extra first must leave no file."""
    marker = folder / "factory_was_called"
    (folder / "recording.py").write_text(
        "from pathlib import Path\n\nimport torch.nn as nn\n\nINPUT_SHAPE = (2, 4)\n\n\n"
        "def make():\n"
        f"    Path({str(marker)!r}).write_text('called')\n"
        "    return nn.Sequential(nn.Linear(4, 3))\n"
    )
    return f"{folder / 'recording.py'}:make", marker


@pytest.mark.parametrize("blocked", ["onnxruntime", "onnx"])
def test_export_without_the_onnx_extra_fails_before_building_the_model(tmp_path, blocked):
    work = tmp_path / "work"
    work.mkdir()
    spec, marker = recording_factory(tmp_path)
    env = blocking(tmp_path, blocked)
    proc = script("export", spec, "-o", "m.onnx", cwd=work, env=env)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert blocked in line and "pip install 'pccompile[onnx]'" in line, line
    assert "internal error" not in line
    assert list(work.iterdir()) == []
    assert not marker.exists(), "the model was built before the extra was checked"
    # the same factory is called when the extra is there: the marker can appear
    proc = script("inspect", spec, "-q", cwd=work)
    assert proc.returncode == 0 and marker.exists(), proc.stderr


# ------------------------------------------------------------------------- start-up and habits
HEAVY = ("torch", "numpy", "networkx", "sympy")


def imported_modules(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the script under ``python -X importtime``; the names of the modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), *argv],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    rows = [ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if "import time:" in ln]
    assert rows, proc.stderr  # -X importtime wrote its table
    return proc, set(rows[1:])  # the first row is the table's header


def test_help_imports_nothing_heavy_and_shows_examples_and_defaults(tmp_path):
    """``--help`` is fast because it imports neither torch nor numpy: checked by what it imports
    (never by seconds, which depend on the machine's load)."""
    proc, modules = imported_modules("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "exit codes" in proc.stdout
    assert "docs/cli.md" not in proc.stdout  # not in the wheel
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"pccompile --help imported {heavy[:5]}"
    assert "pccompile.cli.parser" in modules  # the table is the real one
    sub, modules = imported_modules("verify", "--help", cwd=tmp_path)
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert "(default: zil)" in sub.stdout and "(default: float32)" in sub.stdout
    assert "pccompile verify torchvision:resnet18" in sub.stdout and "-v, --verbose" in sub.stdout
    # the check can fail: a command's run does import torch
    _, modules = imported_modules(
        "inspect",
        f"{FIXTURES / 'other_factories.py'}:make_mlp",
        "--input-shape",
        "3,4",
        "-q",
        cwd=tmp_path,
    )
    assert "torch" in modules


def wait_until_loading_torch(proc: subprocess.Popen) -> None:
    """Return once the process has mapped torch's shared library: it is inside the command's
    start-up (torch loads after the arguments are parsed). A state, not a delay."""
    maps = Path(f"/proc/{proc.pid}/maps")
    for _ in range(12000):  # polls every 10 ms; the bound only stops a hung test
        if proc.poll() is not None:
            raise AssertionError(f"exited before torch loaded: {proc.communicate()}")
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("torch never started loading")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
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
    wait_until_loading_torch(proc)
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
