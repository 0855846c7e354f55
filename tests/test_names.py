"""Vertex names a person can predict (:mod:`pccompile.frontend.names`): module paths, the same in
identical blocks and at both granularities; listed by ``inspect``; a wrong key names the right
ones."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.cli import main


class Att(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.o(torch.tanh(self.q(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.att, self.ln = Att(), nn.LayerNorm(8)

    def forward(self, x):
        return self.ln(x + self.att(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def names(pcm) -> list[str]:
    return [v.name for v in pcm.plan.vertices]


def per_block(ns: list[str], k: int) -> list[str]:
    return [
        n.removeprefix(f"layers.{k}.") for n in ns if n.startswith(f"layers.{k}.") and "->" not in n
    ]


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_identical_blocks_get_identical_names(capture):
    torch.manual_seed(0)
    pcm = pccompile.convert(Net(), torch.randn(4, 8), capture=capture)
    ns = names(pcm)
    assert per_block(ns, 0) == per_block(ns, 1)
    if capture == "fx":
        assert per_block(ns, 0) == ["att.q", "att.tanh", "att.o", "add", "ln"]
    else:  # ATen ops, under the module that called them
        assert per_block(ns, 0) == ["att.q.linear", "att.tanh", "att.o.linear", "add"] + [
            "ln.layer_norm"
        ]
    assert "head" in ns[-2] and ns[-1] == "output"
    assert len(set(ns)) == len(ns)
    ids = [v.name for v in pcm.plan.vertices if v.kind == "identity"]
    assert ids and all("->" in n and n.rsplit(":", 1)[1].isdigit() for n in ids)


def test_a_layer_vertex_has_its_parametric_ops_name_at_either_granularity():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    op = names(pccompile.convert(Net(), x, granularity="op"))
    layer = names(pccompile.convert(Net(), x, granularity="layer"))
    parametric = [n for n in layer if "->" not in n and n != "output"]
    assert set(parametric) <= set(op)  # the same key names the same module
    assert {"layers.0.att.q", "layers.1.att.q", "layers.0.att.o", "layers.1.att.o"} <= set(layer)
    assert not [n for n in layer if n.startswith("layer_")]  # no internal fused-module names


def test_names_key_precision_clamp_and_energies():
    torch.manual_seed(0)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    pcm = pccompile.convert(Net(), x, rule="il", loss_fn=F.cross_entropy)
    held = torch.zeros(4, 8)
    r = pcm.infer(x, target=y, steps=3, clamp={"layers.1.att.q": held})
    assert torch.equal(r.values["layers.1.att.q"][0], held)
    plain = pcm.infer(x, target=y, steps=3)
    weighted = pcm.infer(x, target=y, steps=3, precision={"layers.0.att.o": 4.0})
    assert weighted.energy[-1] != plain.energy[-1]  # the key reached the vertex


def test_a_wrong_name_lists_the_close_ones_and_the_real_command():
    torch.manual_seed(0)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    pcm = pccompile.convert(Net(), x, rule="il", loss_fn=F.cross_entropy)
    for what, kwargs in [
        ("precision", {"precision": {"layers.0.att.0": 2.0}}),
        ("clamp", {"clamp": {"layers.0.att.0": torch.zeros(4, 8)}}),
        ("energies", {"energies": {"layers.0.att.0": pccompile.energies.squared_error}}),
    ]:
        with pytest.raises(pccompile.ConfigError) as info:
            pcm.learn(x, target=y, **kwargs)
        msg = str(info.value)
        assert msg.startswith(f"{what}: no vertex named 'layers.0.att.0'; did you mean")
        assert "'layers.0.att.o'" in msg and "'layers.0.att.q'" in msg
        assert "pccompile inspect MODEL" in msg and "pccompile graph" not in msg
    with pytest.raises(pccompile.ConfigError, match="did you mean 'layers.0.att.o'"):
        pcm.learn(x, target=y, precision={"layer_layers_0_att_o": 2.0})  # the old name


def test_inspect_lists_the_names_in_text_and_json(tmp_path, capsys):
    f = tmp_path / "nets.py"
    f.write_text(
        "import torch.nn as nn\nINPUT_SHAPE = (2, 4)\n\n\ndef make():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))\n"
    )
    assert main(["inspect", f"{f}:make", "--granularity", "layer"]) == 0
    text = capsys.readouterr().out
    assert "names" in text.splitlines()[6] and {"0", "2", "output"} <= set(text.split())
    assert main(["inspect", f"{f}:make", "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [r["names"] for r in s["per_level"]] == [["input"], ["0"], ["1"], ["2"], ["output"]]
    assert {n["id"] for n in s["graph"]["nodes"]} == {"input", "0", "1", "2", "output"}


def test_the_compiled_loop_takes_dotted_names_and_gives_the_eager_loops_numbers():
    """The compiled IL loop builds FX placeholders per vertex: from the FX names (identifiers),
    not the dotted vertex names, and the keys still reach their vertices."""
    torch.manual_seed(0)
    model = Net().double()
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    pcm = pccompile.convert(model, x, rule="il", loss_fn=F.cross_entropy)
    held = torch.zeros(4, 8, dtype=torch.float64)
    opts = dict(steps=4, clamp={"layers.0.att.o": held}, precision={"layers.1.att.q": 3.0})
    out = {}
    for compile in (False, "aot_eager"):
        model.zero_grad()
        rep = pcm.learn(x, target=y, compile=compile, **opts)
        out[compile] = (rep.energy, [p.grad.clone() for p in model.parameters()])
    assert out["aot_eager"][0] == pytest.approx(out[False][0], rel=1e-12)
    for a, b in zip(out[False][1], out["aot_eager"][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
