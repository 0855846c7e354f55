"""docs/recipes.md: every Python block parses, and the TensorBoard example runs against a
stand-in SummaryWriter (TensorBoard and Lightning are not dependencies)."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import pccompile

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", RECIPES.read_text(), flags=re.S)


def test_every_python_block_parses():
    assert len(blocks()) == 2
    for code in blocks():
        ast.parse(code)


class FakeWriter:
    def __init__(self, logdir):
        self.logdir, self.scalars, self.images, self.texts = logdir, [], [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))

    def add_image(self, tag, img, step):
        self.images.append((tag, tuple(img.shape), step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def close(self):
        FakeWriter.last = self


def test_the_tensorboard_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    namespace: dict = {}
    exec(compile(blocks()[1], str(RECIPES), "exec"), namespace)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    loader = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
    pcm = pccompile.convert(net, loader[0][0])
    namespace["train_with_tensorboard"](pcm, loader, logdir=str(tmp_path), trace_every=2)
    w = FakeWriter.last
    assert [s for t, _, s in w.scalars if t == "train/loss"] == [0, 1, 2]
    assert any(t.startswith("inference/energy@0") for t, _, _ in w.scalars)
    assert any(t.startswith("error_norm/level_") for t, _, _ in w.scalars)
    assert [(t, s) for t, _, s in w.images] == [("inference/front", 0), ("inference/front", 2)]
    assert w.images[0][1][0] in (3, 4) and "energy" in w.texts[0][1]
