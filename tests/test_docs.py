"""The documentation runs: every fenced Python block of README.md and docs/*.md executes, every
dotted ``pccompile.…`` name (and every ``from pccompile… import …``) imports, and every
``pccompile …`` command line in a shell block parses with the real parser. A renamed function,
module or flag breaks the build, not the reader.

A block runs in a fresh namespace in a temporary folder, after its :data:`PRELUDE` (the variables
the prose around it has already introduced: ``net``, ``x``, ``opt``...; only what the block names
but does not define). Blocks that cannot run here are in :data:`EXPECTED_FAILURE` with the reason
and the error they fail with: the test asserts that error, so an entry that starts working (its
dependency installed, the block fixed) fails until it is removed.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str

    @property
    def key(self) -> tuple[str, str]:
        """(file, first non-blank line without its comment): survives edits elsewhere."""
        first = next(ln for ln in self.code.splitlines() if ln.strip())
        return self.file, first.split("#")[0].strip()

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                line = text.count("\n", 0, m.start()) + 1
                out.append(Block(str(path.relative_to(ROOT)), line, lang, m.group(2)))
    return out


_DIGITS_NET = """
import torch, torch.nn as nn, torch.nn.functional as F, pccompile
torch.manual_seed(0)
net = model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
"""

# what the prose has introduced before the block (keyed by the block's first line)
PRELUDE: dict[tuple[str, str], str] = {
    ("README.md", "from transformers import BertConfig, BertForSequenceClassification"): (
        "import torch, pccompile\nimport torch.nn.functional as F\n"
    ),
    ("docs/cli.md", "from pccompile import load_converted"): (
        "import torch\nfrom pccompile.cli import main\n"
        "assert main(['convert', 'torchvision:resnet18', '--num-classes', '10', "
        "'--input-shape', '2,3,32,32', '-o', 'out/r18', '-q']) == 0\n"
        "x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])\n"
    ),
    ("docs/export.md", "pcm = pccompile.convert(model, x)"): _DIGITS_NET,
    ("docs/train.md", "opt.zero_grad()"): _DIGITS_NET + "pcm = pccompile.convert(model, x)\n",
    ("docs/train.md", "import torch.distributed as dist"): (
        _DIGITS_NET + "global_batches = [(x, y), (x.flip(0), y.flip(0))]\n"
    ),
}

# blocks that cannot run here: (why, the error they fail with). Remove an entry once it runs.
EXPECTED_FAILURE: dict[tuple[str, str], tuple[str, str]] = {
    ("docs/recipes.md", "import lightning as L"): (
        "a recipe for Lightning, which is not a dependency",
        "No module named 'lightning'",
    ),
    ("docs/recipes.md", "import torch"): (
        "a recipe for TensorBoard, which is not a dependency",
        "No module named 'tensorboard'",
    ),
}

# blocks that train or convert a real network: seconds to minutes
SLOW = {
    ("README.md", "import torch, torchvision, pccompile"),
    ("README.md", "from transformers import BertConfig, BertForSequenceClassification"),
    ("docs/cli.md", "from pccompile import load_converted"),
    ("docs/train.md", "import torch"),
}


def _param(b: Block):
    marks = [pytest.mark.slow] if b.key in SLOW else []
    return pytest.param(b, id=b.id, marks=marks)


PYTHON = blocks("python")


@pytest.mark.parametrize("block", [_param(b) for b in PYTHON])
def test_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    rng = torch.get_rng_state()
    try:
        if block.key in PRELUDE:
            exec(compile(PRELUDE[block.key], f"<prelude of {block.id}>", "exec"), namespace)
        code = compile(block.code, block.id, "exec")
        if block.key not in EXPECTED_FAILURE:
            exec(code, namespace)
            return
        reason, error = EXPECTED_FAILURE[block.key]
        try:
            exec(code, namespace)
        except Exception as exc:  # noqa: BLE001 - the expected error is checked by its text
            assert error in str(exc), f"{block.id} ({reason}) failed otherwise: {exc!r}"
        else:
            pytest.fail(f"{block.id} now runs ({reason}): remove it from EXPECTED_FAILURE")
    finally:
        torch.set_rng_state(rng)


def test_every_block_is_found_and_every_table_entry_names_one():
    keys = {b.key for b in PYTHON}
    assert len(PYTHON) >= 8, [b.id for b in PYTHON]
    stale = [k for k in [*PRELUDE, *EXPECTED_FAILURE, *SLOW] if k not in keys]
    assert not stale, f"entries naming no block (a block's first line changed?): {stale}"


# ------------------------------------------------------------------------------ dotted names
NAME = re.compile(r"(?<![\w./-])pccompile(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"from (pccompile(?:\.\w+)*) import ([\w, ()]+)")


def _names() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        rel = path.relative_to(ROOT)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in NAME.finditer(line):
                found.append((f"{rel}:{n}", m.group(0)))
            for m in FROM_IMPORT.finditer(line):
                for attr in re.split(r"[,\s()]+", m.group(2)):
                    if attr and attr != "as":
                        found.append((f"{rel}:{n}", f"{m.group(1)}.{attr}"))
    return found


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted``, then follow the attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name and not ".".join(parts[:i]).startswith(exc.name):
                raise  # a real missing dependency inside the module
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_dotted_pccompile_name_in_the_docs_imports():
    names = _names()
    assert len({n for _, n in names}) >= 20
    broken = []
    for where, name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            broken.append(f"{where}: {name} ({type(exc).__name__}: {exc})")
    assert not broken, "\n".join(broken)


def test_the_name_check_can_fail():
    with pytest.raises((ImportError, AttributeError)):
        resolve("pccompile.energy.feedforward_values")  # the old docs/cli.md name
    with pytest.raises(AttributeError):
        resolve("pccompile.engine.energy.no_such_function")
    assert resolve("pccompile.engine.energy.feedforward_values").__name__ == "feedforward_values"


# ------------------------------------------------------------------------------ command lines
def _command_lines() -> list[tuple[str, list[str]]]:
    out = []
    for b in blocks("bash"):
        for n, raw in enumerate(b.code.replace("\\\n", " ").splitlines(), b.line + 1):
            words = shlex.split(raw, comments=True)
            if "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == [
                "pccompile"
            ]:
                words = words[words.index("-m") + 1 :]
            if not words or words[0] != "pccompile":
                continue
            if any(w.startswith("[") or "|" in w for w in words):
                continue  # a synopsis (`[--rule zil|fpa]`), not a command
            out.append((f"{b.file}:{n}", words[1:]))
    return out


def test_every_pccompile_command_line_in_the_docs_parses():
    from pccompile.cli import build_parser

    lines = _command_lines()
    assert len(lines) >= 8, lines
    bad = []
    for where, argv in lines:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            bad.append(f"{where}: pccompile {shlex.join(argv)}")
    assert not bad, "\n".join(bad)
