#!/usr/bin/env bash
# What a newcomer gets from `pip install pccompile` without extras: build the wheel, install it
# into a fresh virtual environment (torch from the machine's local wheels when present), then
# from a folder outside the repository check that
#   1. `pccompile --help` imports neither torch nor numpy (checked by -X importtime, not seconds),
#   2. `pccompile export` without the onnx extra fails (exit 2) naming the extra before it builds
#      the model (a factory that records being called),
#   3. the README's Python snippet runs as written.
# Usage: tools/check_installed.sh [PYTHON]   (PYTHON builds the wheel; default .venv/bin/python)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build_py="${1:-$repo/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log="$work/install.log"
quiet() { "$@" >>"$log" 2>&1 || { cat "$log"; return 1; }; }
quiet "$build_py" -m pip wheel --no-deps -w "$work/wheel" "$repo"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
quiet "$py" -m pip install torch==2.14.1 torchvision==0.29.1 \
  || quiet "$py" -m pip install "torch>=2.4" "torchvision>=0.19"
quiet "$py" -m pip install "$work"/wheel/pccompile-*.whl
mkdir "$work/elsewhere"
cd "$work/elsewhere"
export OMP_NUM_THREADS=1

"$py" - "$work/venv/bin/pccompile" <<'PY'
import subprocess, sys
from pathlib import Path

script = sys.argv[1]
# 1. --help imports neither torch nor numpy (what makes it fast; seconds depend on the load)
proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"],
                      capture_output=True, text=True)
assert proc.returncode == 0 and "examples:" in proc.stdout, proc.stderr
modules = {ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if "import time:" in ln}
heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "numpy", "networkx"))
assert "pccompile.cli.parser" in modules and not heavy, heavy[:5]
print(f"check_installed: pccompile --help imported {len(modules)} modules, none of torch/numpy")
# 2. export without the onnx extra refuses before the model is built: the factory records a call
marker = Path("factory_was_called").resolve()
Path("recording.py").write_text(
    "from pathlib import Path\nimport torch.nn as nn\nINPUT_SHAPE = (2, 4)\n"
    f"def make():\n    Path({str(marker)!r}).write_text('called')\n"
    "    return nn.Sequential(nn.Linear(4, 3))\n"
)
proc = subprocess.run([script, "export", "recording.py:make", "-o", "m.onnx"],
                      capture_output=True, text=True)
print(f"check_installed: export without the onnx extra: exit {proc.returncode}: "
      f"{proc.stderr.strip()}")
assert proc.returncode == 2 and "pip install 'pccompile[onnx]'" in proc.stderr, proc.stderr
assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
assert not marker.exists(), "the model was built before the onnx extra was checked"
assert not Path("m.onnx").exists()
PY

"$py" - "$repo/README.md" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
snippet = re.search(r"## In Python\s+```python\n(.*?)```", text, flags=re.S).group(1)
exec(compile(snippet, "README.md (In Python)", "exec"), {"__name__": "__main__"})
print("check_installed: the README's Python snippet ran")
PY
echo "check_installed: ok"
