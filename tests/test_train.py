"""``pccompile train`` and :mod:`pccompile.train`: Z-IL training equals BP training bitwise over
whole epochs, a resume equals an uninterrupted run bitwise, the outputs are valid, data
directories in MNIST/CIFAR-10/image-folder formats load, and bad input exits 2 with one line and
nothing written. Every run is a few batches of the embedded digits (or tiny files)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pccompile.cli import main
from pccompile.data import load_dataset
from pccompile.train import ResidualCNN, Trainer

pytest.importorskip("sklearn")  # the embedded digits

FAST = ["--data", "digits", "--batch-size", "32", "--limit-batches", "6"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def params(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, bad


def assert_usage_error(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_zil_equals_bp_over_two_epochs_bitwise(tmp_path, capsys):
    outs = {}
    for rule in ("zil", "bp"):
        outs[rule] = tmp_path / rule
        code, out, err = run(
            capsys, "train", *FAST, "--epochs", 2, "--rule", rule, "-o", outs[rule]
        )
        assert code == 0, err
        assert out.count("epoch ") == 2
    assert_bitwise(params(outs["zil"]), params(outs["bp"]))  # asked: <= 1e-5; it is bitwise
    m_zil, m_bp = (json.loads((outs[r] / "metrics.json").read_text()) for r in ("zil", "bp"))
    assert [m["test_acc"] for m in m_zil] == [m["test_acc"] for m in m_bp]
    assert [m["train_loss"] for m in m_zil] == [m["train_loss"] for m in m_bp]


def test_compare_bp_outputs_are_valid(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", *FAST, "--epochs", 2, "--compare", "bp", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.json",
        "model.pt",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("train_loss", "test_acc", "seconds", "bp_train_loss", "bp_test_acc"):
            assert isinstance(m[key], float), key
        assert m["max_param_diff"] == 0.0 and m["test_acc"] == m["bp_test_acc"]
    model = ResidualCNN(1, 10)
    model.load_state_dict(params(out))  # strict keys: the original model's
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "max |theta - theta_bp| 0.00e+00" in stdout


def test_resume_equals_an_uninterrupted_run_bitwise(tmp_path, capsys):
    opts = [*FAST, "--optimizer", "adam", "--weight-decay", "1e-4", "--compare", "bp"]
    opts += ["--device", "cpu"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(capsys, "train", *opts, "--epochs", 2, "-o", straight)[0] == 0
    assert run(capsys, "train", *opts, "--epochs", 1, "-o", split)[0] == 0
    assert len(json.loads((split / "metrics.json").read_text())) == 1
    code, out, err = run(capsys, "train", *opts, "--epochs", 2, "-o", split, "--resume")
    assert code == 0, err
    assert out.count("epoch ") == 1  # only epoch 2 ran
    assert_bitwise(params(split), params(straight))
    ck_a = torch.load(split / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert_bitwise(ck_a["bp_model"], ck_b["bp_model"])
    assert torch.equal(ck_a["rng"], ck_b["rng"]) and torch.equal(
        ck_a["generator"], ck_b["generator"]
    )
    strip = lambda ms: [{k: v for k, v in m.items() if "seconds" not in k} for m in ms]  # noqa: E731
    assert strip(ck_a["metrics"]) == strip(ck_b["metrics"])


def test_resume_with_other_settings_and_existing_output_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "train", *FAST, "-o", out, "-q")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_usage_error(run(capsys, "train", *FAST, "-o", out), "already exists", "--force")
    assert_usage_error(
        run(capsys, "train", *FAST, "--lr", "0.1", "--epochs", 2, "-o", out, "--resume"),
        "--resume with other settings",
        "lr",
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_usage_error(
        run(capsys, "train", *FAST, "-o", tmp_path / "none", "--resume"), "does not exist"
    )
    assert not (tmp_path / "none").exists()
    assert run(capsys, "train", *FAST, "-o", out, "--force", "-q")[0] == 0


def test_interrupt_keeps_the_last_complete_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = Trainer.run_epoch

    def second_epoch_interrupted(self, on_batch=None):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self, on_batch)

    monkeypatch.setattr(Trainer, "run_epoch", second_epoch_interrupted)
    code, _, err = run(capsys, "train", *FAST, "--epochs", 3, "-o", out)
    assert code == 130 and "--resume" in err and "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    monkeypatch.setattr(Trainer, "run_epoch", real)
    assert run(capsys, "train", *FAST, "--epochs", 2, "-o", out, "--resume", "-q")[0] == 0
    assert run(capsys, "train", *FAST, "--epochs", 2, "-o", tmp_path / "b", "-q")[0] == 0
    assert_bitwise(params(out), params(tmp_path / "b"))


def test_curves_skipped_without_matplotlib(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = run(capsys, "train", *FAST, "-o", tmp_path / "run", "-q")
    assert code == 0
    assert err.count("\n") == 1 and "curves.png skipped" in err and "pccompile[plot]" in err
    assert not (tmp_path / "run" / "curves.png").exists()
    assert (tmp_path / "run" / "model.pt").exists()


# ------------------------------------------------------------------------------------ data
def _idx(path: Path, arr: np.ndarray) -> None:
    head = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    path.write_bytes(head + arr.astype(np.uint8).tobytes())


def _mnist(root: Path, n: int = 40) -> None:
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_data_directories_in_the_standard_formats(tmp_path):
    from PIL import Image

    _mnist(tmp_path / "mnist")
    d = load_dataset(tmp_path / "mnist")
    assert d.name.startswith("mnist") and d.x_train.shape == (40, 1, 28, 28) and d.num_classes == 10
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    rec = np.zeros((5, 1 + 3072), np.uint8)
    rec[:, 0] = np.arange(5)
    rec.tofile(cifar / "data_batch_1.bin")
    rec.tofile(cifar / "test_batch.bin")
    d = load_dataset(cifar)
    assert d.name.startswith("cifar10") and d.x_test.shape == (5, 3, 32, 32)
    folder = tmp_path / "images"
    for split in ("train", "test"):
        for c, colour in (("cat", 0), ("dog", 255)):
            (folder / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (6, 6), (colour, i, 0)).save(folder / split / c / f"{i}.png")
    d = load_dataset(folder)
    assert d.classes == ["cat", "dog"] and d.x_train.shape == (6, 3, 6, 6)
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1]


def test_train_on_an_mnist_directory(tmp_path, capsys):
    _mnist(tmp_path / "mnist")
    args = ["--data", tmp_path / "mnist", "--batch-size", "8", "-q", "--json"]
    code, out, err = run(capsys, "train", *args, "-o", tmp_path / "run")
    assert code == 0, err
    assert json.loads(out)["batches"] == 5


# ------------------------------------------------------------------------------------ bad input
def _wrong_model(tmp_path: Path) -> str:
    f = tmp_path / "nets.py"
    f.write_text(
        "import torch.nn as nn\n"
        "def three():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
        "def wrong_input():\n    return nn.Sequential(nn.Flatten(), nn.Linear(50, 10))\n"
    )
    return str(f)


@pytest.mark.parametrize(
    "case, needles",
    [
        ("unknown", ["imagenet", "not a data set"]),
        ("missing", ["no such directory"]),
        ("wrong_format", ["neither MNIST"]),
        ("bad_mnist", ["not an unsigned-byte IDX file"]),
        ("three_classes", ["outputs 3 classes", "10"]),
        ("wrong_input", ["rejects", "(32, 1, 8, 8)"]),
        ("bad_option", ["Option(s) ['gamma'] do not apply to rule 'bp'"]),
        ("bad_device", ["device 'cuda:99'"]),
        ("not_a_device", ["'gpu' is not a torch device"]),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case, needles):
    data, model, extra = "digits", [], []
    if case == "unknown":
        data = "imagenet"
    elif case == "missing":
        data = str(tmp_path / "no" / "such")
    elif case == "wrong_format":
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "readme.txt").write_text("hello")
        data = str(tmp_path / "notes")
    elif case == "bad_mnist":
        _mnist(tmp_path / "mnist")
        (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"garbage!")
        data = str(tmp_path / "mnist")
    elif case == "three_classes":
        model = [f"{_wrong_model(tmp_path)}:three"]
    elif case == "wrong_input":
        model = [f"{_wrong_model(tmp_path)}:wrong_input"]
    elif case == "bad_option":
        extra = ["--rule", "bp", "--gamma", "0.5"]
    elif case == "bad_device":
        extra = ["--device", "cuda:99"]
    elif case == "not_a_device":
        extra = ["--device", "gpu"]
    out = tmp_path / "out"
    args = ["train", *model, "--data", data, "--batch-size", "32", *extra, "-o", out]
    assert_usage_error(run(capsys, *args), *needles)
    assert not out.exists()


# ------------------------------------------------------------------------------------ torchrun
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_torchrun_two_ranks_equal_one_process(tmp_path, capsys):
    """The default residual CNN has BatchNorm: under torchrun its layers become
    GlobalBatchNorm (the global batch's statistics), so 2 ranks on gloo follow one process on
    the same global batches (the BP copy too): in float64 to 1e-12 over 2 epochs x 6 batches at
    the default SGD 0.05, momentum 0.9. Bad input is reported once, by rank 0."""
    import os
    import subprocess

    opts = [*FAST, "--epochs", 2, "--compare", "bp", "--dtype", "float64", "-q"]
    assert run(capsys, "train", *opts, "-o", tmp_path / "one")[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "pccompile", "train"]

    def torchrun(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cmd, *map(str, args)], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip

    proc = torchrun(*opts, "-o", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = params(tmp_path / "one"), params(tmp_path / "two")
    assert one.keys() == two.keys()  # GlobalBatchNorm keeps BatchNorm's state-dict keys
    assert {v.dtype for v in two.values()} == {torch.float64, torch.int64}
    for k in one:
        assert (one[k] - two[k]).abs().max() <= 1e-12, k
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [m["ranks"] for m in metrics] == [2, 2]
    assert all(m["max_param_diff"] == 0.0 for m in metrics)  # Z-IL == BP under torchrun too
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.json",
        "model.pt",
    ]
    ResidualCNN(1, 10).double().load_state_dict(two)
    bad = torchrun(*FAST, "--batch-size", 33, "-o", tmp_path / "bad")
    assert bad.returncode != 0 and bad.stderr.count("pccompile train: error:") == 1, bad.stderr
    assert "does not split over 2 ranks" in bad.stderr


def test_dtype_is_the_models_own_or_the_option(tmp_path, capsys):
    """No silent cast: a float64 model trains in float64 (the images follow it), and --dtype
    casts the model (bfloat16 too)."""
    model = tmp_path / "m.py"
    model.write_text(
        "import torch\nfrom pccompile.train import ResidualCNN\n"
        "def make():\n    return ResidualCNN(1, 10, width=4).double()\n"
    )
    for extra, dtype in (([], torch.float64), (["--dtype", "bfloat16"], torch.bfloat16)):
        out = tmp_path / str(dtype)
        args = ["train", f"{model}:make", *FAST, "--limit-batches", 2, *extra, "-q", "-o", out]
        assert run(capsys, *args)[0] == 0
        state = params(out)
        assert {v.dtype for k, v in state.items() if "num_batches" not in k} == {dtype}


def test_global_batchnorm_is_batchnorm_in_one_process():
    from pccompile.distributed import GlobalBatchNorm, global_batchnorm

    torch.manual_seed(0)
    net = ResidualCNN(1, 10)
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(6, 1, 8, 8)
    expected = ResidualCNN(1, 10)
    expected.load_state_dict(ref)
    g = global_batchnorm(net)
    assert isinstance(g.stem[1], GlobalBatchNorm) and g.state_dict().keys() == ref.keys()
    assert torch.equal(g(x), expected(x))
    assert_bitwise(g.state_dict(), expected.state_dict())  # running statistics too


def test_cosine_schedule_decays_per_step_and_a_resume_continues_it_bitwise():
    from pccompile.train import TrainConfig
    from pccompile.train.trainer import lr_at

    data = load_dataset("digits")
    cfg = TrainConfig(
        rule="zil",
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        epochs=2,
        batch_size=32,
        limit_batches=3,
        lr_schedule="cosine",
    )
    assert lr_at(cfg, 0, 6) == 0.1 and lr_at(cfg, 3, 6) == pytest.approx(0.05)
    assert lr_at(TrainConfig(lr=0.1), 5, 6) == 0.1  # constant
    torch.manual_seed(0)
    straight = Trainer(ResidualCNN(1, 10), data, cfg)
    rows = [straight.run_epoch(), straight.run_epoch()]
    assert rows[0]["lr"] == pytest.approx(0.1 * (1 + np.cos(np.pi * 2 / 6)) / 2)
    assert straight.opt.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, 5, 6))
    torch.manual_seed(0)
    first = Trainer(ResidualCNN(1, 10), data, cfg)
    first.run_epoch()
    state = first.state_dict()
    torch.manual_seed(1)  # another init: the checkpoint must restore everything
    again = Trainer(ResidualCNN(1, 10), data, cfg)
    again.load_state_dict(state)
    again.run_epoch()
    assert_bitwise(again.model.state_dict(), straight.model.state_dict())
    # the schedule changes the run (the check can fail)
    torch.manual_seed(0)
    flat = Trainer(
        ResidualCNN(1, 10), data, TrainConfig(**{**cfg.as_dict(), "lr_schedule": "constant"})
    )
    flat.run_epoch()
    flat.run_epoch()
    assert not torch.equal(flat.model.head.weight, straight.model.head.weight)
    with pytest.raises(Exception, match="lr_schedule 'step'"):
        TrainConfig(lr_schedule="step")


def test_rule_options_granularity_energies_and_trace_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "il"
    opts = ["--rule", "il", "--granularity", "layer", "--trace", "--epochs", 2]
    opts += ["--rule-option", "output=free", "--rule-option", "output_precision=0.5"]
    opts += ["--rule-option", 'precision={"stem.0": 2.0}', "--rule-option", "steps=6"]
    code, stdout, err = run(capsys, "train", *FAST, *opts, "-o", out)
    assert code == 0, err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["config"]["rule_options"] == {
        "output": "free",
        "output_precision": 0.5,
        "precision": {"stem.0": 2.0},
        "steps": 6,
    }
    assert state["config"]["granularity"] == "layer" and state["config"]["trace"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    for m in metrics:  # IL tracks the energy: it falls during inference
        assert isinstance(m["energy_start"], float) and m["energy_end"] < m["energy_start"]
    for k in (1, 2):
        assert (out / f"trace_epoch{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trace_epoch<k>.png" in stdout
    # the options reach the rule: another output precision gives other parameters
    other = tmp_path / "other"
    opts[opts.index("output_precision=0.5")] = "output_precision=2"
    assert run(capsys, "train", *FAST, *opts, "-o", other)[0] == 0
    assert not torch.equal(params(out)["head.weight"], params(other)["head.weight"])
    # --force replaces the run, trace pictures included
    assert run(capsys, "train", *FAST, "--rule", "il", "-o", out, "--force", "-q")[0] == 0
    assert not list(out.glob("trace_epoch*.png"))
    again = json.loads((out / "metrics.json").read_text())
    assert again[0]["energy_start"] is not None  # a plain IL run tracks the energy too


def test_bad_rule_options_exit_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    for option, needle in [
        ("output", "write KEY=VALUE"),
        ("energies=x", "a Python object"),
        ('precision={"stm": 2}', "did you mean 'stem.0'"),
        ("no_such=1", "do not apply to rule 'il'"),
        ("output=sideways", "output"),
    ]:
        assert_usage_error(
            run(capsys, "train", *FAST, "--rule", "il", "--rule-option", option, "-o", out),
            needle,
        )
        assert not out.exists()
    assert_usage_error(run(capsys, "train", *FAST, "--rule", "bp", "--trace", "-o", out), "bp")
    code, _, err = run(capsys, "train", *FAST, "--rule", "zil", "-o", out, "-q")
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and metrics[0]["energy_start"] is None  # efficient Z-IL tracks no energy
