"""The learning step in ONNX: a Z-IL (and an IL) step exported with ``graph="learn"`` /
``"il-learn"`` and run in onnxruntime gives ``pcm.learn``'s gradients and BatchNorm updates, and
an SGD loop driven from numpy through the session trains like PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.cli import main
from pccompile.io.onnx import OnnxMismatchError, export_onnx
from pccompile.io.onnx_learn import LearnExportError, phase_of, trace_learn_step

EPS32 = float(np.finfo(np.float32).eps)
ULPS = 16  # allowed |ORT - PyTorch| in units of eps * max|PyTorch| per tensor


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class ResCNN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, a residual join around a strided-free conv, a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = h + torch.tanh(self.conv2(h))
        h = F.relu(self.conv3(h))
        return self.fc(h.flatten(1))


class Block(nn.Module):
    """A pre-norm transformer block (attention written out, GELU MLP, two residual joins) and a
    linear read-out of the mean token."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        split = lambda z: z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        return self.head(x.mean(1))


class Attention(nn.Module):
    """Token embeddings, ``nn.MultiheadAttention`` (its fused scaled_dot_product_attention
    kernel: need_weights=False), a residual join, a read-out of the mean token."""

    def __init__(self, vocab: int = 10, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.att = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        h = self.emb(ids)
        a, _ = self.att(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


MODELS = {"mlp": MLP, "cnn": ResCNN, "block": Block, "attention": Attention}


def batch(model: str, seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    shapes = {"mlp": (n, 6), "cnn": (n, 1, 8, 8), "block": (n, 5, 8)}
    classes = {"mlp": 4, "cnn": 3, "block": 3, "attention": 3}
    if model == "attention":
        x = torch.randint(0, 10, (n, 5), generator=g)
    else:
        x = torch.randn(shapes[model], generator=g)
    return x, torch.randint(0, classes[model], (n,), generator=g)


def build(model: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[model]()


def session(path: Path) -> ort.InferenceSession:
    onnx.checker.check_model(str(path), full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feed_of(res, pcm: pccompile.PCModule, x, y) -> dict[str, np.ndarray]:
    """The session's inputs: the batch, the target, and the model's parameters and buffers by
    their state_dict names."""
    state = dict(pcm.state_dict(keep_vars=True))
    return {
        name: (x if k == 0 else y if k == 1 else state[name]).detach().numpy()
        for k, name in enumerate(res.input_names)
    }


def reference(pcm: pccompile.PCModule, x, y, loss_fn, **rule) -> dict[str, torch.Tensor]:
    """``pcm.learn``'s loss, gradients and updated buffers, by the ONNX output names (on a copy
    of the module's state: the caller's module is put back as it was)."""
    saved = {k: v.clone() for k, v in pcm.state_dict().items()}
    pcm.zero_grad(set_to_none=True)
    report = pcm.learn(x, target=y, loss_fn=loss_fn, **rule)
    out = {"loss": torch.tensor(report.loss, dtype=torch.float64)}  # a float: exact
    for n, p in pcm.named_parameters():
        out[f"grad.{n}"] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
    for n, b in pcm.named_buffers():
        out[f"new.{n}"] = b.clone()
    pcm.load_state_dict(saved)
    pcm.zero_grad(set_to_none=True)
    return out


def ulps(got: np.ndarray, want: torch.Tensor) -> float:
    """max |got - want| in units of float32 eps times the tensor's largest magnitude."""
    w = want.detach().double().numpy()
    scale = max(np.abs(w).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(got.astype(np.float64) - w).max(initial=0.0) / (EPS32 * scale))


@pytest.mark.parametrize("model", list(MODELS))
def test_learn_graph_in_onnxruntime_gives_pcm_learn_gradients(tmp_path, model):
    """The exported Z-IL step, run in onnxruntime on a batch it was not traced with, gives the
    gradients and BatchNorm running statistics ``pcm.learn`` writes, to a few float32 ulps."""
    net = build(model)
    x, y = batch(model)
    pcm = pccompile.convert(net, x)
    res = export_onnx(pcm, tmp_path / "step.onnx", (x,), "learn", target=y, loss_fn=F.cross_entropy)
    params = [n for n, p in pcm.named_parameters() if p.requires_grad]
    assert res.input_names[2 : 2 + len(params)] == params
    assert res.output_names[: 1 + len(params)] == ["loss", *(f"grad.{n}" for n in params)]
    sess = session(tmp_path / "step.onnx")
    x2, y2 = batch(model, seed=1)
    got = dict(zip(res.output_names, sess.run(None, feed_of(res, pcm, x2, y2))))
    want = reference(pcm, x2, y2, F.cross_entropy)
    assert set(got) <= set(want)
    worst = {n: ulps(got[n], want[n]) for n in got}
    assert max(worst.values()) <= ULPS, worst
    if model == "cnn":  # train-mode BatchNorm: its running statistics are outputs too
        assert {"new.bn.running_mean", "new.bn.running_var", "new.bn.num_batches_tracked"} <= set(
            got
        )
        assert not np.allclose(got["new.bn.running_mean"], pcm.bn.running_mean.numpy())


def test_broken_learn_graph_fails_the_same_comparison(tmp_path, monkeypatch):
    """Falsifier: with the exporter's own nll_loss translation (total_weight faked as 1) the
    graph's cross-entropy gradient is B times too large, and export_onnx refuses to write it."""
    import pccompile.io.onnx_learn as learn

    real = learn._export_decompositions

    def without_nll() -> dict:
        table = real()
        for op in list(table):
            if "nll_loss" in str(op):
                del table[op]
        return table

    monkeypatch.setattr(learn, "_export_decompositions", without_nll)
    x, y = batch("mlp")
    pcm = pccompile.convert(build("mlp"), x)
    with pytest.raises(OnnxMismatchError, match="nothing was written"):
        export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.cross_entropy)
    assert not (tmp_path / "s.onnx").exists()


def test_learn_graph_float64_in_onnxruntime(tmp_path):
    """Where onnxruntime has float64 kernels (an MLP with MSE) the step runs in float64. The
    exporter writes Python scalars (MSE's 2/N) as float32 constants cast to float64, so it agrees
    to float32's relative rounding (~1e-8), not float64's (docs/export.md, limits)."""
    net = build("mlp").double()
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randn(5, 4, dtype=torch.float64)
    pcm = pccompile.convert(net, x)
    res = export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.mse_loss)
    got = dict(
        zip(res.output_names, session(tmp_path / "s.onnx").run(None, feed_of(res, pcm, x, y)))
    )
    want = reference(pcm, x, y, F.mse_loss)
    for n, g in got.items():
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, want[n].numpy(), rtol=EPS32, atol=0)


def test_learn_graph_shows_the_levels(tmp_path):
    """Each node of the learn graph is named after its phase: the forward pass, then one group
    per level of local VJPs (not one global backward), each parameter's gradient from its own
    vertex's level."""
    x, y = batch("mlp")
    pcm = pccompile.convert(build("mlp"), x)
    prog = trace_learn_step(pcm, (x,), y, F.cross_entropy)
    res = export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.cross_entropy)
    model = onnx.load(tmp_path / "s.onnx")
    producer = {o: nd.name.split("/")[0] for nd in model.graph.node for o in nd.output}
    levels = {v.name: v.level for v in pcm.plan.vertices}
    fc = {v.module: v.name for v in pcm.plan.vertices if v.module is not None}
    for name in ("fc1", "fc2", "fc3"):
        level = levels[fc[getattr(pcm, name)]]
        assert producer[f"grad.{name}.weight"] == f"level_{level}"
    assert {f"level_{t}" for t in range(1, pcm.plan.depth + 1)} <= set(res.phases)
    assert res.phases["forward"] > 0
    # the traced ATen graph carries the same tags
    assert {phase_of(n) for n in prog.gm.graph.nodes} >= {"forward", "level_0", "level_1"}


def test_il_learn_graph_matches_pcm_learn_with_rule_il(tmp_path):
    """``il-learn``: IL's T inference steps unrolled then the local weight gradients, equal to
    ``pcm.learn(rule="il")`` with the same gamma, steps and output precision."""
    x, y = batch("mlp")
    rule = pccompile.IL(gamma=0.2, steps=6, output_precision=0.5)
    pcm = pccompile.convert(build("mlp"), x, rule)
    before = dict(pcm.named_parameters())
    res = export_onnx(
        pcm, tmp_path / "il.onnx", (x,), "il-learn", target=y, loss_fn=F.cross_entropy
    )
    assert {f"step_{s}" for s in range(rule.steps + 1)} <= set(res.phases)
    # the export left the module as it was: the same Parameter objects, no .grad
    after = dict(pcm.named_parameters())
    assert all(
        after[n] is p and isinstance(p, nn.Parameter) and p.grad is None for n, p in before.items()
    )
    x2, y2 = batch("mlp", seed=2)
    got = dict(
        zip(res.output_names, session(tmp_path / "il.onnx").run(None, feed_of(res, pcm, x2, y2)))
    )
    want = reference(pcm, x2, y2, F.cross_entropy)
    worst = {n: ulps(got[n], want[n]) for n in got}
    assert max(worst.values()) <= 4 * ULPS, worst  # T steps of rounding, each within ULPS
    # and it is IL, not Z-IL: the gradients differ from the exact step's
    exact = reference(pcm, x2, y2, F.cross_entropy, rule="zil")
    assert not np.allclose(got["grad.fc1.weight"], exact["grad.fc1.weight"].numpy(), atol=1e-5)


def sgd_in_onnxruntime(sess, res, params: dict, buffers: dict, batches, lr: float) -> dict:
    """Train from numpy: each step feeds the batch and the current weights to the session and
    applies ``w -= lr * grad.w``; buffers take the ``new.`` outputs."""
    state = {**params, **buffers}
    for x, y in batches:
        feed = {n: state[n] for n in res.input_names[2:]}
        feed[res.input_names[0]], feed[res.input_names[1]] = x, y
        out = dict(zip(res.output_names, sess.run(None, feed)))
        for n in params:
            state[n] = state[n] - np.float32(lr) * out[f"grad.{n}"]
        for n in buffers:
            state[n] = out[f"new.{n}"]
    return state


def test_training_inside_onnxruntime_ends_at_pytorchs_parameters(tmp_path):
    """A whole (small) run: 12 SGD steps of a BatchNorm CNN on digits-like data, once with
    ``pcm.learn`` + ``torch.optim.SGD``, once in onnxruntime from numpy. Same parameters and
    running statistics at the end, to float32 rounding."""
    net = build("cnn")
    g = torch.Generator().manual_seed(3)
    data = [
        (torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g))
        for _ in range(12)
    ]
    pcm = pccompile.convert(net, data[0][0])
    res = export_onnx(
        pcm, tmp_path / "s.onnx", (data[0][0],), "learn", target=data[0][1], loss_fn=F.cross_entropy
    )
    sess = session(tmp_path / "s.onnx")
    params = {n: p.detach().numpy().copy() for n, p in pcm.named_parameters()}
    buffers = {n: b.numpy().copy() for n, b in pcm.named_buffers()}
    batches = [(x.numpy(), y.numpy()) for x, y in data]
    final = sgd_in_onnxruntime(sess, res, params, buffers, batches, lr=0.1)
    opt = torch.optim.SGD(pcm.parameters(), lr=0.1)
    for x, y in data:
        opt.zero_grad()
        pcm.learn(x, target=y, loss_fn=F.cross_entropy)
        opt.step()
    for n, t in pcm.state_dict().items():
        t = t.double().numpy()
        err = np.abs(final[n].astype(np.float64) - t).max() / max(np.abs(t).max(), 1e-30)
        assert err < 1e-5, (n, err)  # float32 rounding, compounded over 12 steps
    moved = np.abs(final["fc.weight"] - params["fc.weight"]).max()
    assert moved > 1e-3  # it did train


# ----------------------------------------------------------------------------------- bad input
def test_learn_graph_refuses_an_inexact_rule(tmp_path):
    x, y = batch("mlp")
    pcm = pccompile.convert(build("mlp"), x)
    half = pccompile.ZIL(gamma=0.5)
    with pytest.raises(LearnExportError, match=r"not exact: gamma=0.5"):
        export_onnx(
            pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.mse_loss, rule=half
        )
    with pytest.raises(LearnExportError, match="il-learn"):
        export_onnx(
            pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.mse_loss, rule="il"
        )
    assert not (tmp_path / "s.onnx").exists()


def test_learn_graph_refuses_dropout_in_train_mode(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4))
    x, y = batch("mlp")
    pcm = pccompile.convert(net, x)
    with pytest.raises(LearnExportError, match=r"random numbers .*pcm.eval\(\)"):
        export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.cross_entropy)
    assert not (tmp_path / "s.onnx").exists()
    pcm.eval()  # no dropout: exports, and matches
    res = export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.cross_entropy)
    got = dict(
        zip(res.output_names, session(tmp_path / "s.onnx").run(None, feed_of(res, pcm, x, y)))
    )
    want = reference(pcm, x, y, F.cross_entropy)
    assert max(ulps(got[n], want[n]) for n in got) <= ULPS


def test_learn_graph_refuses_a_loss_that_is_not_a_scalar(tmp_path):
    x, y = batch("mlp")
    pcm = pccompile.convert(build("mlp"), x)
    per_sample = lambda out, t: F.cross_entropy(out, t, reduction="none")
    with pytest.raises(pccompile.InputError, match="scalar"):
        export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=per_sample)
    assert not (tmp_path / "s.onnx").exists()


def test_learn_graph_names_an_op_it_cannot_hold(tmp_path):
    """A transposed convolution's backward has no rewrite: a clear error, no file."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 10 * 10, 3))
    x = torch.randn(2, 1, 8, 8)
    pcm = pccompile.convert(net, x)
    y = torch.tensor([0, 2])
    with pytest.raises(LearnExportError, match="transposed convolution"):
        export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=F.cross_entropy)
    assert not (tmp_path / "s.onnx").exists()


def test_cli_export_il_learn_graph(tmp_path, capsys):
    fixtures = Path(__file__).parent / "fixtures"
    path = tmp_path / "il.onnx"
    argv = [f"{fixtures / 'other_factories.py'}:make_mlp", "--input-shape", "3,4"]
    code = main(["export", *argv, "-o", str(path), "--graph", "il-learn", "--steps", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert {f"step_{s}" for s in range(5)} <= set(report["phases"])
    code = main(
        ["export", *argv, "-o", str(tmp_path / "b.onnx"), "--graph", "il-learn", "--rule", "fpa"]
    )
    assert code != 0 and "il-learn computes IL" in capsys.readouterr().err


def test_cli_export_learn_graph(tmp_path, capsys):
    fixtures = Path(__file__).parent / "fixtures"
    path = tmp_path / "step.onnx"
    argv = [f"{fixtures / 'other_factories.py'}:make_mlp", "--input-shape", "3,4"]
    code = main(["export", *argv, "-o", str(path), "--graph", "learn", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["graph"] == "learn" and report["verified"]
    assert report["outputs"][0] == "loss" and all(
        o.startswith("grad.") for o in report["outputs"][1:]
    )
    assert report["nodes"] > 0 and any(p.startswith("level_") for p in report["phases"])
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == report["inputs"]


@pytest.mark.slow
def test_benchmark_script_quick_run(tmp_path):
    """``benchmarks/onnx_learn.py --quick`` runs and writes its JSON (no time is asserted)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "onnx_learn.json"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "onnx_learn.py"), "--quick", "--json", str(out)],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["run"]["max_rel_diff"] < 1e-5 and report["run"]["steps"] == 3
    assert {r["model"] for r in report["steps"]} >= {"mlp", "cnn", "block", "digits-cnn"}
    assert all(r["nodes"] > 0 and r["ort_ms"]["median"] > 0 for r in report["steps"])
    assert "| model | batch |" in proc.stdout


def test_learn_graph_refuses_a_loss_with_value_dependent_python(tmp_path):
    """A loss that branches in Python on a tensor's value cannot become one graph: the trace
    stops with an error naming the cause (never a graph specialised to one branch)."""
    x, y = batch("mlp")
    pcm = pccompile.convert(build("mlp"), x)

    def branchy(out, target):
        scale = 2.0 if out.sum() > 0 else 1.0
        return scale * F.cross_entropy(out, target)

    with pytest.raises(LearnExportError, match="Tracing the learn step failed.*control flow"):
        export_onnx(pcm, tmp_path / "s.onnx", (x,), "learn", target=y, loss_fn=branchy)
    assert not (tmp_path / "s.onnx").exists()
