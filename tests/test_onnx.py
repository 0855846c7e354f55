"""``pccompile export``: ONNX files of the prediction and of the PC energy load in onnxruntime and
match PyTorch; a failed or interrupted export leaves nothing under the requested name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import pccompile
import pccompile.io.onnx as onnx_export
from pccompile.cli import main
from pccompile.engine.energy import EnergyModule, feedforward_values, value_node_names
from pccompile.modelspec import build_model, parse_spec

# nn.LSTM kept as one leaf module: torch.export notes that LSTM reassigns its _flat_weights list
# during the trace. Harmless (the results are compared below); nothing else is filtered.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:The tensor attributes .*_flat_weights.* were assigned during export:UserWarning"
)

FIXTURES = Path(__file__).parent / "fixtures"
LSTM = [f"{FIXTURES / 'lstm_factory.py'}:make_model"]
MLP = [f"{FIXTURES / 'other_factories.py'}:make_mlp", "--input-shape", "3,4"]
RESNET = ["torchvision:resnet18", "--num-classes", "10", "--input-shape", "2,3,32,32"]
MODELS = {"resnet18": (RESNET, (2, 3, 32, 32), 10), "lstm": (LSTM, (2, 5, 8), 3)}
TOL = 1e-4


def export(capsys, tmp_path: Path, argv: list[str], *extra: str) -> tuple[Path, dict]:
    path = tmp_path / "model.onnx"
    code = main(["export", *argv, "-o", str(path), "--json", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return path, json.loads(out)


def same_model(argv: list[str]) -> torch.nn.Module:
    """The model the CLI built: same spec, same seed (0), eval mode."""
    torch.manual_seed(0)
    num_classes = int(argv[argv.index("--num-classes") + 1]) if "--num-classes" in argv else None
    return build_model(parse_spec(argv[0]), num_classes).model.eval()


def session(path: Path) -> ort.InferenceSession:
    onnx.checker.check_model(str(path), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a.astype(np.float64) - b.detach().double().numpy()).max(initial=0.0))


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_graph_matches_pytorch_in_onnxruntime(tmp_path, capsys, name):
    argv, shape, _ = MODELS[name]
    path, report = export(capsys, tmp_path, argv, "--graph", "predict")
    assert report["verified"] and report["max_abs_diff"] <= TOL
    assert report["inputs"] == ["x"] and report["outputs"] == ["output"]
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = same_model(argv)(x)
    diff = max_diff(got, ref)
    print(
        f"{name} predict: onnxruntime vs PyTorch max abs diff {diff:.3e} "
        f"(export check: {report['max_abs_diff']:.3e})"
    )
    assert got.shape == tuple(ref.shape) and diff <= TOL
    if name == "resnet18":  # a dynamic batch dimension: a batch of 5 runs in a file made with 2
        assert report["dynamic_batch"] is True
        assert not isinstance(sess.get_inputs()[0].shape[0], int)
        x5 = torch.randn(5, *shape[1:], generator=torch.Generator().manual_seed(8))
        (got5,) = sess.run(None, {"x": x5.numpy()})
        with torch.no_grad():
            assert got5.shape == (5, 10) and max_diff(got5, same_model(argv)(x5)) <= TOL


def test_static_batch_fixes_the_batch_dimension(tmp_path, capsys):
    path, report = export(capsys, tmp_path, MLP, "--static-batch")
    assert report["dynamic_batch"] is False
    assert session(path).get_inputs()[0].shape == [3, 4]


@pytest.mark.parametrize("name", list(MODELS))
def test_energy_graph_is_the_pc_energy_in_onnxruntime(tmp_path, capsys, name):
    argv, shape, classes = MODELS[name]
    path, report = export(capsys, tmp_path, argv, "--graph", "energy")
    assert report["verified"] and report["max_abs_diff"] <= TOL
    assert report["loss_fn"] == "cross-entropy against random class indices"

    model = same_model(argv)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=gen)
    y = torch.randint(0, classes, (shape[0],), generator=gen)
    pcm = pccompile.convert(model, x).eval()
    names = value_node_names(pcm.plan)
    assert report["inputs"] == ["x", "target", *[f"value:{n}" for n in names]]
    assert report["outputs"] == [*[f"error:{n}" for n in names], "energy"]

    sess = session(path)
    assert [o.name for o in sess.get_outputs()] == report["outputs"]
    used = {i.name for i in sess.get_inputs()}

    def run(values: list[torch.Tensor]) -> list[np.ndarray]:
        feed = dict(zip(report["inputs"], [x, y, *values], strict=True))
        return sess.run(None, {k: v.numpy() for k, v in feed.items() if k in used})

    # At the feed-forward state every error node is zero and the energy is the loss.
    ff = feedforward_values(pcm.plan, (x,), y, F.cross_entropy)
    *errors, energy = run(ff)
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y)
    assert max(float(np.abs(e).max(initial=0.0)) for e in errors) <= TOL
    assert abs(float(energy) - loss.item()) <= TOL

    # Anywhere else: the same errors and energy as PyTorch's EnergyModule.
    moved = [v + 0.01 * torch.randn(v.shape, generator=gen) for v in ff]
    got = run(moved)
    with torch.no_grad():
        ref = EnergyModule(pcm.plan, F.cross_entropy).eval()(x, y, *moved)
    diff = max(max_diff(g, r) for g, r in zip(got, ref, strict=True))
    print(
        f"{name} energy: onnxruntime vs PyTorch max abs diff {diff:.3e} over "
        f"{len(got)} outputs (export check: {report['max_abs_diff']:.3e})"
    )
    assert diff <= TOL
    # F = sum_v 1/2 ||eps_v||^2 + L(x_fc, y): the loss reads the last vertex's value node.
    half_sq = sum(0.5 * float((e.astype(np.float64) ** 2).sum()) for e in got[:-1])
    out_loss = F.cross_entropy(moved[names.index("fc")].double(), y).item()
    assert half_sq > 0 and abs(float(got[-1]) - (half_sq + out_loss)) <= TOL


def test_no_verify_writes_an_unchecked_file(tmp_path, capsys):
    path, report = export(capsys, tmp_path, MLP, "--no-verify")
    assert report["verified"] is False and report["max_abs_diff"] is None
    assert [i.name for i in session(path).get_inputs()] == ["input_1"]


def test_mismatch_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_export, "_check", lambda *a, **k: {"output": 0.5})
    code = main(["export", *MLP, "-o", str(tmp_path / "model.onnx")])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.count("\n") == 1 and "differs from PyTorch by 5.000e-01 > 0.0001" in err
    assert "--no-verify" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_export_leaves_no_file(tmp_path, capsys, monkeypatch, exc):
    def half_write(module, args, in_names, out_names, dest, *rest):
        Path(dest).write_bytes(b"\x08\x07half an onnx file")
        raise exc("simulated failure while writing")

    monkeypatch.setattr(onnx_export, "_write", half_write)
    code = main(["export", *MLP, "-o", str(tmp_path / "model.onnx")])
    _, err = capsys.readouterr()
    assert code == (130 if exc is KeyboardInterrupt else 2)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither model.onnx nor a temporary folder


def test_existing_file_is_kept_without_force(tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    code = main(["export", *MLP, "-o", str(path)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert path.read_bytes() == b"old"
    assert main(["export", *MLP, "-o", str(path), "--force", "-q"]) == 0
    assert [o.name for o in session(path).get_outputs()] == ["output"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
