"""The ``pccompile`` command line, called in-process through ``main(argv)``.

Subcommands on torchvision resnet18 and on a small LSTM classifier factory; bad input gives one
line on stderr (what + fix) and exit code 2; outputs are written atomically and never overwritten
without --force. ONNX export is in test_onnx.py.
"""

from __future__ import annotations

import json
import os
import pickle
import runpy
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
import torchvision

import pccompile
from pccompile.cli import build_parser, main
from pccompile.io.artifact import load_converted
from pccompile.io.render import draw_png, render_graph

FIXTURES = Path(__file__).parent / "fixtures"
FACTORY = FIXTURES / "lstm_factory.py"
OTHER = FIXTURES / "other_factories.py"
LSTM = f"{FACTORY}:make_model"
MLP = [f"{OTHER}:make_mlp", "--input-shape", "3,4"]
RESNET = ["torchvision:resnet18", "--num-classes", "10", "--input-shape", "2,3,32,32"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(result: tuple[int, str, str], *needles: str) -> str:
    """Exit 2, exactly one line on stderr containing every needle, and no traceback."""
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def only_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------- parser
def test_parser_is_built_separately_and_has_the_four_subcommands():
    parser = build_parser()
    args = parser.parse_args(["verify", LSTM, "--gamma", "0.5", "--dtype", "float64"])
    assert (args.command, args.model, args.gamma, args.dtype) == ("verify", LSTM, 0.5, "float64")
    for cmd in ("convert", "verify", "inspect", "export"):
        assert cmd in parser.format_help()


def test_python_m_pccompile_runs_main(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pccompile", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("pccompile", run_name="__main__")
    assert exc.value.code == 0
    assert f"pccompile {pccompile.__version__}" in capsys.readouterr().out


def test_usage_error_returns_2_without_exiting(capsys):
    code, _, err = run(capsys, "verify")  # MODEL missing
    assert code == 2 and "MODEL" in err


# ---------------------------------------------------------------------------------- convert
def test_convert_resnet18_writes_weights_graph_code_manifest_and_reloads(tmp_path, capsys):
    out = tmp_path / "r18"
    code, stdout, err = run(capsys, "convert", *RESNET, "--rule", "zil", "-o", str(out))
    assert code == 0, err
    assert only_entries(out) == ["forward.py", "graph.graphml", "manifest.json", "weights.pt"]
    assert only_entries(tmp_path) == ["r18"]  # no temporary folder left behind
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"] == "torchvision:resnet18" and man["num_classes"] == 10
    zil = {"gamma": 1.0, "steps": None, "mode": "auto", "init": "forward", "step_offset": 0}
    assert man["rule"] == {"name": "zil", "options": zil}
    assert man["input_shapes"] == [[2, 3, 32, 32]] and man["dtype"] == "float32"
    assert man["vertices"]["identity"] > 0  # resnet's skip connections are padded
    assert man["steps"] == {"zil": man["depth"] + 1, "fpa": man["depth"]}
    assert f"{man['vertices']['total']} vertices" in stdout and "depth" in stdout

    graph = nx.read_graphml(out / "graph.graphml")
    assert graph.number_of_nodes() == man["vertices"]["total"]
    kinds = {d["kind"] for _, d in graph.nodes(data=True)}
    assert kinds == {"input", "op", "identity", "output"}
    assert json.loads(graph.nodes["conv1"]["shape"]) == [2, 64, 16, 16]
    assert "def forward" in (out / "forward.py").read_text()

    weights = torch.load(out / "weights.pt", weights_only=True)
    pcm = load_converted(out)
    assert isinstance(pcm, pccompile.PCModule) and not pcm.training
    assert pcm.plan.depth == man["depth"]
    assert set(weights) == set(pcm.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in pcm.state_dict().items())


def test_convert_lstm_json_is_one_object_and_reload_uses_the_given_weights(tmp_path, capsys):
    torch.manual_seed(123)
    custom = pccompile.modelspec.build_model(pccompile.modelspec.parse_spec(LSTM)).model
    wfile = tmp_path / "custom.pt"
    torch.save(custom.state_dict(), wfile)
    out = tmp_path / "lstm"
    code, stdout, err = run(
        capsys, "convert", LSTM, "--weights", str(wfile), "-o", str(out), "--json"
    )
    assert code == 0, err
    report = json.loads(stdout)  # exactly one JSON object on stdout
    assert report["ok"] and report["input_shapes"] == [[2, 5, 8]]  # from the module's INPUT_SHAPE
    assert report["vertices"]["op"] >= 2  # one leaf LSTM vertex or an unrolled chain: both fine
    pcm = load_converted(out)
    for k, v in custom.state_dict().items():
        assert torch.equal(pcm.state_dict()[k], v), k
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(pcm.eval()(x), custom.eval()(x), atol=1e-6)


def test_convert_il_records_layer_vertices_and_granularity_overrides(tmp_path, capsys):
    for extra, want in (([], "layer"), (["--granularity", "op"], "op")):
        out = tmp_path / want
        code, _, err = run(capsys, "convert", *MLP, "--rule", "il", *extra, "-o", str(out))
        assert code == 0, err
        man = json.loads((out / "manifest.json").read_text())
        assert man["granularity"] == want and man["level"] is False
        assert load_converted(out).capture_options.granularity == want


def test_convert_does_not_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, *["convert", *MLP, "-o", str(out)])[0] == 0
    line = assert_usage_error(
        run(capsys, "convert", *MLP, "-o", str(out)), "already exists", "--force"
    )
    assert str(out) in line
    assert run(capsys, "convert", *MLP, "-o", str(out), "--force")[0] == 0
    assert only_entries(out) == ["forward.py", "graph.graphml", "manifest.json", "weights.pt"]
    assert only_entries(tmp_path) == ["out"]


def test_force_never_deletes_what_the_command_did_not_write(tmp_path, capsys, monkeypatch):
    """The docs' out/ then out/r18: --force on out/ must not delete the nested output, nor a
    note the user put there; and it says so before converting anything."""
    import pccompile.cli.commands as commands

    out = tmp_path / "out"
    assert run(capsys, "convert", *MLP, "-o", str(out))[0] == 0
    assert run(capsys, "convert", *MLP, "-o", str(out / "r18"))[0] == 0
    (out / "note.txt").write_text("keep me")
    monkeypatch.setattr(commands, "load_model", _never_build)
    line = assert_usage_error(
        run(capsys, "convert", *MLP, "-o", str(out), "--force"),
        "note.txt, r18/",
        "--force only replaces what pccompile wrote",
    )
    assert ".tmp" not in line
    assert (out / "note.txt").read_text() == "keep me"
    assert (out / "r18" / "manifest.json").is_file()
    assert only_entries(tmp_path) == ["out"]


def test_force_never_replaces_a_folder_pccompile_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert_usage_error(
        run(capsys, "convert", *MLP, "-o", str(mine), "--force"), "not written by pccompile"
    )
    assert (mine / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_convert_leaves_no_output(tmp_path, capsys, monkeypatch, exc):
    def half_write(graph, path, *args, **kwargs):
        Path(path).write_text("<graphml half-written")
        raise exc("simulated failure while writing")

    monkeypatch.setattr(nx, "write_graphml", half_write)
    code, _, err = run(capsys, "convert", *MLP, "-o", str(tmp_path / "out"))
    assert code == (130 if exc is KeyboardInterrupt else 2)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert only_entries(tmp_path) == []  # neither the output nor a temporary folder


# ---------------------------------------------------------------------------------- verify
def test_verify_resnet18_zil_passes_in_train_mode(capsys):
    # training mode: BatchNorm normalises with batch statistics, the harder case
    code, out, err = run(capsys, "verify", *RESNET, "--rule", "zil", "--train-mode")
    assert code == 0, out + err
    assert "FAIL" not in out and out.strip().endswith("PASS: all 62 parameters within 0.0001")
    assert "cross-entropy against random class indices" in out
    rows = [line for line in out.splitlines() if line.startswith(("conv1.weight", "fc.bias"))]
    assert len(rows) == 2 and all(r.endswith("ok") for r in rows)


def test_verify_in_train_mode_uses_the_train_mode_output(capsys):
    # googlenet returns its auxiliary heads only in training mode: the default loss must see them
    args = ("torchvision:googlenet", "--num-classes", "10", "--input-shape", "2,3,64,64")
    code, out, err = run(capsys, "verify", *args, "--train-mode", "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"], err
    assert report["loss_fn"].startswith("sum of MSEs") and report["training"] is True
    assert any(p["name"].startswith("aux1.") for p in report["params"])


def test_verify_lstm_zil_passes_in_float64_with_json(capsys):
    code, out, _ = run(capsys, "verify", LSTM, "--dtype", "float64", "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["failed"] == []
    assert report["tol"] == 1e-10 and report["rule"] == "zil"
    names = {p["name"] for p in report["params"]}
    assert {"fc.weight", "fc.bias"} <= names and any(n.startswith("lstm.") for n in names)
    assert all(p["rel_diff"] <= 1e-10 for p in report["params"])


def test_verify_faithful_schedule_and_fpa_pass(capsys):
    code, out, _ = run(capsys, "verify", LSTM, "--mode", "faithful", "--dtype", "float64", "-q")
    assert code == 0 and out.strip().startswith("PASS: all") and "within 1e-10" in out
    code, out, _ = run(capsys, "verify", *MLP, "--rule", "fpa", "-q")
    assert code == 0 and out.strip() == "PASS: all 4 parameters within 0.0001"


def test_verify_train_steps_runs_the_differential_checker(capsys):
    code, out, err = run(capsys, "verify", *MLP, "--train-steps", "3", "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"], err
    run_ = report["training_run"]
    assert run_["steps"] == 3 and run_["bitwise"] and run_["problems"] == []
    # falsifying: gamma=0.5 leaves BP over the training run, and the run is reported
    code, out, _ = run(capsys, "verify", *MLP, "--gamma", "0.5", "--train-steps", "2", "-q")
    assert code == 1 and out.startswith("FAIL") and "training run: step 0 (grad)" in out


def test_verify_train_steps_with_habits(capsys):
    from pccompile.cli.parser import _habit_names
    from pccompile.testing import HABITS

    assert _habit_names() == list(HABITS)
    habits = [a for h in HABITS for a in ("--habit", h)]
    code, out, err = run(capsys, "verify", *MLP, "--train-steps", "3", *habits, "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"], err
    assert report["training_run"]["habits"] == list(HABITS)
    assert report["training_run"]["problems"] == []


def test_verify_fails_with_fail_rows_on_a_non_exact_setting(capsys):
    code, out, _ = run(capsys, "verify", LSTM, "--rule", "zil", "--gamma", "0.5")
    assert code == 1
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("parameter"))
    assert lines[header].split()[-1] == "0.0001" and set(lines[header + 1]) <= {"-", " "}
    rows = [line for line in lines[header + 2 :] if line and not line.startswith(("PASS", "FAIL"))]
    assert rows and all(r.endswith("FAIL") for r in rows)  # gamma**level scales every update
    assert lines[-1].startswith(f"FAIL: {len(rows)} of {len(rows)} parameters beyond 0.0001")


def test_verify_too_few_steps_fails_only_the_deep_parameters(capsys):
    code, out, _ = run(capsys, "verify", LSTM, "--steps", "2", "--json")
    report = json.loads(out)
    assert code == 1 and not report["passed"]
    by_name = {p["name"]: p["ok"] for p in report["params"]}
    assert by_name["fc.weight"] and by_name["fc.bias"]  # level 1: reached within 2 steps
    assert not any(ok for n, ok in by_name.items() if n.startswith("lstm."))


def test_rule_option_that_does_not_apply_is_a_usage_error(capsys):
    assert_usage_error(
        run(capsys, "verify", *MLP, "--rule", "il", "--mode", "faithful"), "mode", "do not apply"
    )


# ---------------------------------------------------------------------------------- inspect
def test_inspect_resnet18_text_and_json_agree(capsys):
    code, text, _ = run(capsys, "inspect", *RESNET)
    assert code == 0
    code, out, _ = run(capsys, "inspect", *RESNET, "--json")
    s = json.loads(out)
    assert code == 0 and s["kinds"]["input"] == 1 and s["kinds"]["output"] == 1
    assert sum(s["kinds"].values()) == s["vertices"] and s["identity_vertices"] > 0
    assert s["steps"] == {"zil": s["depth"] + 1, "fpa": s["depth"]} and s["leveled"]
    assert s["parameters"] == 62 and s["param_uses"] == 62
    assert sum(r["param_uses"] for r in s["per_level"]) == s["param_uses"]
    assert [r["level"] for r in s["per_level"]] == list(range(s["depth"] + 1, -1, -1))
    assert f"zil {s['depth'] + 1} (depth+1), fpa {s['depth']} (depth)" in text
    assert f"{s['identity_vertices']} identity" in text and f"0..{s['depth']}" in text


def test_inspect_lstm_graphml_json_and_png_files(tmp_path, capsys):
    gml, png = tmp_path / "g.graphml", tmp_path / "g.png"
    code, out, err = run(
        capsys, "inspect", LSTM, "--format", "graphml", "-o", str(gml), "--png", str(png)
    )
    assert code == 0, err
    g = nx.read_graphml(gml)
    assert {d["kind"] for _, d in g.nodes(data=True)} >= {"input", "op", "output"}
    assert all(isinstance(d["level"], int) for _, d in g.nodes(data=True))
    assert json.loads(g.nodes["fc"]["params"]) == ["fc.bias", "fc.weight"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {gml}, {png}" in out

    code, out, _ = run(capsys, "inspect", LSTM, "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["vertices"] == g.number_of_nodes()
    assert len(data["graph"]["nodes"]) == data["vertices"] and "edges" in data["graph"]


def test_inspect_does_not_overwrite_without_force(tmp_path, capsys):
    target = tmp_path / "g.json"
    target.write_text("old")
    assert_usage_error(
        run(capsys, "inspect", *MLP, "--format", "json", "-o", str(target)),
        "already exists",
        "--force",
    )
    assert target.read_text() == "old"
    assert run(capsys, "inspect", *MLP, "--format", "json", "-o", str(target), "--force")[0] == 0
    assert json.loads(target.read_text())["vertices"] > 0


def test_inspect_dot_without_pydot_names_the_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydot", None)  # as if pydot were not installed
    assert_usage_error(
        run(capsys, "inspect", *MLP, "--format", "dot"), "pip install 'pccompile[dot]'"
    )


def _never_build(args):
    raise AssertionError("the model was built before the problem was reported")


@pytest.fixture
def never_build(monkeypatch):
    """Any attempt to build the model fails the test (the commands bind load_model at import)."""
    import pccompile.cli.commands as commands

    monkeypatch.setattr(commands, "load_model", _never_build)


@pytest.mark.parametrize(
    ("blocked", "argv", "needles"),
    [
        ("onnxruntime", ["export", "-o", "m.onnx"], ["onnxruntime", "pip install 'pccompile["]),
        ("onnx", ["export", "-o", "m.onnx", "--no-verify"], ["onnx,", "pccompile[onnx]"]),
        ("onnxscript", ["export", "-o", "m.onnx"], ["onnxscript", "pccompile[onnx]"]),
        ("matplotlib", ["inspect", "--png", "g.png"], ["matplotlib", "pccompile[plot]"]),
        ("pydot", ["inspect", "--format", "dot"], ["pydot", "pccompile[dot]"]),
    ],
)
def test_a_missing_extra_is_named_before_the_model_is_built(
    tmp_path, monkeypatch, capsys, never_build, blocked, argv, needles
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, blocked, None)  # as if not installed
    cmd, *rest = argv
    line = assert_usage_error(run(capsys, cmd, "torchvision:resnet18", *rest), *needles)
    assert "internal error" not in line
    assert only_entries(tmp_path) == []


def test_library_export_without_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    from pccompile.io.onnx import export_onnx

    pcm = pccompile.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), torch.randn(2, 4))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(pccompile.ConfigError, match=r"onnxruntime.*'pccompile\[onnx\]'"):
        export_onnx(pcm, tmp_path / "m.onnx", (torch.randn(2, 4),))
    assert only_entries(tmp_path) == []


def test_library_views_without_pydot_or_matplotlib_name_the_extra(tmp_path, monkeypatch):
    pcm = pccompile.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), torch.randn(2, 4))
    for name in ["pydot", "matplotlib.backends.backend_agg", "matplotlib.figure"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(pccompile.ConfigError, match=r"pip install 'pccompile\[dot\]'"):
        render_graph("dot", pcm.graph, {})
    with pytest.raises(pccompile.ConfigError, match=r"pip install 'pccompile\[plot\]'"):
        draw_png(pcm.graph, tmp_path / "g.png")
    assert only_entries(tmp_path) == []


def test_inspect_dot_with_pydot(tmp_path, capsys):
    pydot = pytest.importorskip("pydot")  # optional dependency: DOT output needs it
    target = tmp_path / "g.dot"
    assert run(capsys, "inspect", *RESNET, "--format", "dot", "-o", str(target))[0] == 0
    (graph,) = pydot.graph_from_dot_file(str(target))
    assert len(graph.get_edges()) > 100


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("resnet18", ["has no ':'", "torchvision:resnet18"]),
        ("torchvision:resnet1800", ["torchvision has no model", "torchvision:resnet18"]),
        ("no_such_package_xyz.models:make", ["Cannot import module", "PYTHONPATH"]),
        (f"{FIXTURES / 'missing.py'}:make_model", ["does not exist", "missing.py"]),
        (f"{FACTORY}:make_modle", ["no attribute 'make_modle'", "make_model"]),
        (f"{OTHER}:make_not_a_module", ["returned a str, not an nn.Module", "return"]),
        (f"{OTHER}:make_broken", ["raised RuntimeError: factory exploded", "fix the factory"]),
    ],
)
def test_bad_model_specs(capsys, spec, needles):
    assert_usage_error(run(capsys, "inspect", spec, "--input-shape", "2,5,8"), *needles)


def test_untraceable_model_names_the_line_and_the_cli_fix(capsys):
    line = assert_usage_error(
        run(capsys, "verify", f"{OTHER}:make_untraceable", "--input-shape", "3,4"),
        "Cannot trace",
        "if x.sum() > 0",
        "--leaf-module",
    )
    assert "leaf_modules=['gate']" in line
    code, out, _ = run(
        capsys,
        "verify",
        f"{OTHER}:make_untraceable",
        "--input-shape",
        "3,4",
        "--leaf-module",
        "gate",
        "-q",
    )
    assert code == 0 and out.startswith("PASS")


@pytest.mark.parametrize(
    ("shape", "needles"),
    [
        ("2,5,7", ["rejected input(s) of shape (2, 5, 7)", "Expected 8, got 7", "--input-shape"]),
        ("2,x,8", ["'2,x,8' is not a shape", "--input-shape 2,3,32,32"]),
        ("0,5,8", ["'0,5,8' is not a shape", "positive"]),
    ],
)
def test_wrong_input_shape(capsys, shape, needles):
    assert_usage_error(run(capsys, "verify", LSTM, "--input-shape", shape), *needles)


def test_factory_without_input_shape_asks_for_one(capsys):
    assert_usage_error(run(capsys, "inspect", f"{OTHER}:make_mlp"), "--input-shape", "INPUT_SHAPE")


def _lstm_state() -> dict[str, torch.Tensor]:
    return pccompile.modelspec.build_model(pccompile.modelspec.parse_spec(LSTM)).model.state_dict()


def test_weights_with_missing_keys(tmp_path, capsys):
    state = _lstm_state()
    del state["fc.bias"]
    torch.save(state, tmp_path / "w.pt")
    assert_usage_error(
        run(capsys, "verify", LSTM, "--weights", str(tmp_path / "w.pt")),
        "does not fit the model",
        "missing keys [fc.bias]",
        "same MODEL",
    )


def test_weights_with_mis_shaped_and_extra_keys(tmp_path, capsys):
    state = _lstm_state()
    state["fc.weight"] = torch.zeros(5, 16)
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    assert_usage_error(
        run(
            capsys,
            "convert",
            LSTM,
            "--weights",
            str(tmp_path / "w.pt"),
            "-o",
            str(tmp_path / "out"),
        ),
        "fc.weight (file (5, 16), model (3, 16))",
        "unexpected keys [head.weight]",
    )
    assert only_entries(tmp_path) == ["w.pt"]


class _Evil:
    """Unpickling this would create a file: weights_only=True must refuse before that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_weights_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    state = _lstm_state()
    state["fc.bias"] = _Evil(str(marker))
    torch.save(state, tmp_path / "evil.pt")
    assert_usage_error(
        run(capsys, "verify", LSTM, "--weights", str(tmp_path / "evil.pt")),
        "refused by torch.load(weights_only=True)",
        "pickles io.open",
        "state_dict()",
    )
    assert not marker.exists()


def test_missing_and_garbage_weights_files(tmp_path, capsys):
    assert_usage_error(
        run(capsys, "verify", LSTM, "--weights", str(tmp_path / "nope.pt")),
        "does not exist",
        "--weights",
    )
    for junk in [b"not a torch file\n" * 4, bytes(range(256)), b"\x80\x02}q\x00."]:
        (tmp_path / "junk.pt").write_bytes(junk)
        assert_usage_error(
            run(capsys, "verify", LSTM, "--weights", str(tmp_path / "junk.pt")),
            "Cannot read weights file",
            "not a file written by torch.save",
        )


def test_debug_shows_the_traceback_and_keeps_the_exit_code(capsys):
    code, _, err = run(capsys, "inspect", "torchvision:resnet1800", "--debug")
    assert code == 2
    assert "Traceback" in err and "ModelSpecError" in err
    assert err.strip().splitlines()[-1].startswith("pccompile inspect: error: torchvision has no")


def test_json_reports_errors(capsys):
    code, out, err = run(capsys, "inspect", "torchvision:resnet1800", "--json")
    assert code == 2 and len(err.strip().splitlines()) == 1
    report = json.loads(out)
    assert report["ok"] is False and report["exit_code"] == 2 and "resnet1800" in report["error"]


def test_cli_runs_without_tqdm(monkeypatch, capsys):
    """tqdm is an optional extra (the progress bar); the commands work without it."""
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--json"]) == 0
    assert '"depth"' in capsys.readouterr().out


# ---------------------------------------------------------------------------------- outputs
def test_output_paths_are_checked_before_the_model_is_built(tmp_path, capsys, never_build):
    (tmp_path / "a_file").write_text("")
    assert_usage_error(
        run(capsys, "convert", *MLP, "-o", str(tmp_path / "a_file" / "out")), "is a file"
    )
    (tmp_path / "g.json").write_text("old")
    assert_usage_error(
        run(capsys, "inspect", *MLP, "--format", "json", "-o", str(tmp_path / "g.json")),
        "already exists",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "g.json"]


def test_outputs_get_the_users_umask_not_private_modes(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out, png = tmp_path / "out", tmp_path / "g.png"
        assert run(capsys, "convert", *MLP, "-o", str(out))[0] == 0
        assert run(capsys, "inspect", *MLP, "--format", "png", "-o", str(png))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert stat.S_IMODE(png.stat().st_mode) == 0o644


def test_a_failed_write_names_the_requested_path_not_the_temporary_one(
    tmp_path, capsys, monkeypatch
):
    import pccompile.io.artifact as artifact

    def disk_full(obj, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(artifact.torch, "save", disk_full)
    out = tmp_path / "out"
    line = assert_usage_error(run(capsys, "convert", *MLP, "-o", str(out)), "No space left")
    assert str(out / "weights.pt") in line and ".tmp" not in line
    assert only_entries(tmp_path) == []


def test_a_converted_folder_moves_with_its_model_file(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.copy(OTHER, project / "models" / "nets.py")
    out = project / "runs" / "mlp"
    spec = f"{project / 'models' / 'nets.py'}:make_mlp"
    assert run(capsys, "convert", spec, "--input-shape", "3,4", "-o", str(out))[0] == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["model_relative"] == "../../models/nets.py:make_mlp"
    moved = tmp_path / "elsewhere"
    project.rename(moved)  # the absolute path in "model" no longer exists
    pcm = load_converted(moved / "runs" / "mlp")
    assert isinstance(pcm, pccompile.PCModule)
    # a manifest written before model_relative existed still loads from its absolute path
    old = tmp_path / "old"
    shutil.copytree(moved, old)
    man["model"] = f"{old / 'models' / 'nets.py'}:make_mlp"
    del man["model_relative"]
    (old / "runs" / "mlp" / "manifest.json").write_text(json.dumps(man))
    assert isinstance(load_converted(old / "runs" / "mlp"), pccompile.PCModule)


# ---------------------------------------------------------------------------------- model specs
def test_a_typo_in_leaf_module_is_an_error_with_the_close_names(capsys):
    assert_usage_error(
        run(
            capsys,
            "verify",
            f"{OTHER}:make_untraceable",
            "--input-shape",
            "3,4",
            "--leaf-module",
            "gat",
        ),
        "--leaf-module 'gat' is not a submodule",
        "did you mean gate",
    )


def test_a_malicious_pickle_is_reported_as_refused_unsafe_not_damaged(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    state = _lstm_state()
    state["fc.bias"] = Evil()
    torch.save(state, tmp_path / "evil.pt")
    line = assert_usage_error(
        run(capsys, "verify", LSTM, "--weights", str(tmp_path / "evil.pt")),
        "refused by torch.load(weights_only=True) as unsafe",
        "system",
    )
    assert "damaged" not in line
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_with_a_state_dict_entry_loads(tmp_path, capsys):
    state = _lstm_state()
    torch.save({"epoch": 3, "state_dict": state, "lr": 0.1}, tmp_path / "ckpt.pt")
    code, out, err = run(capsys, "verify", LSTM, "--weights", str(tmp_path / "ckpt.pt"), "-q")
    assert code == 0 and out.startswith("PASS"), err


def test_a_model_file_gets_the_same_module_name_in_every_process(tmp_path):
    """So a model pickled in one process unpickles in another that loaded the same file."""
    from pccompile.modelspec import build_model, file_module_name, parse_spec

    torch.manual_seed(0)
    model = build_model(parse_spec(f"{OTHER}:make_untraceable")).model
    assert type(model).__module__ == file_module_name(OTHER)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    code = (
        "import pickle, sys\n"
        "from pccompile.modelspec import build_model, parse_spec\n"
        f"build_model(parse_spec({str(OTHER) + ':make_untraceable'!r}))\n"
        f"m = pickle.loads(open({str(tmp_path / 'model.pkl')!r}, 'rb').read())\n"
        "print(type(m).__name__, type(m).__module__)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Branchy", file_module_name(OTHER)]


# ---------------------------------------------------------------------------------- pictures
def test_inspect_format_png_and_svg_draw_the_leveled_graph(tmp_path, capsys):
    png, svg = tmp_path / "g.png", tmp_path / "g.svg"
    assert run(capsys, "inspect", *RESNET, "--format", "png", "-o", str(png))[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert height > width  # one row per level, not a 2730x360 strip
    assert run(capsys, "inspect", *MLP, "--format", "svg", "-o", str(svg))[0] == 0
    assert b"<svg" in svg.read_bytes()[:500] and b"Linear" in svg.read_bytes()
    assert_usage_error(
        run(capsys, "inspect", *MLP, "--format", "png", "-o", str(tmp_path / "x.svg")),
        "ends in .svg",
    )
    assert_usage_error(run(capsys, "inspect", *MLP, "--format", "png"), "-o FILE")


def test_graph_vertices_have_readable_labels(capsys):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    g = pccompile.convert(net, torch.randn(1, 3, 32, 32)).graph
    assert g.nodes["conv1"]["label"] == "Conv2d" and g.nodes["conv1"]["op"] == "module:conv1"
    labels = {d["label"] for _, d in g.nodes(data=True)}
    assert {"input", "output", "identity", "BatchNorm2d", "ReLU", "add", "Linear"} <= labels


def test_verify_reports_progress_inside_its_stage():
    from pccompile.verify import verify

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    seen: list[str] = []
    res = verify(
        pccompile.convert(net, x), (x,), y, torch.nn.functional.mse_loss, progress=seen.append
    )
    assert res.passed and seen == ["bp step", "zil step"]


def test_verbose_logs_what_is_done(tmp_path, capsys):
    code, _, err = run(capsys, "convert", *MLP, "-o", str(tmp_path / "out"), "-v")
    assert code == 0 and f"wrote {tmp_path / 'out'}" in err


HF_CONFIG = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
    "num_labels": 3,
}


def test_transformers_model_from_a_config_file_verifies_bitwise(tmp_path, capsys):
    """transformers:ClassName --config: random init from the config, token-id inputs, converted
    through torch.export (fx cannot trace it), trained against BP."""
    pytest.importorskip("transformers")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(HF_CONFIG))
    spec = ["transformers:BertForSequenceClassification", "--config", str(cfg)]
    code, out, _ = run(capsys, "verify", *spec, "--dtype", "float64", "--train-steps", "2", "-q")
    assert code == 0 and out.startswith("PASS"), out
    code, _, err = run(capsys, "verify", "transformers:BertForSequenceClassification")
    assert code == 2 and "needs --config config.json" in err
    code, _, err = run(capsys, "verify", "transformers:NoSuchModel", "--config", str(cfg))
    assert code == 2 and "no model class 'NoSuchModel'" in err


def test_capture_option_selects_the_front_end(capsys):
    base = ["inspect", f"{OTHER}:make_untraceable", "--input-shape", "3,4"]
    code, _, err = run(capsys, *base, "--capture", "fx")
    assert code == 2 and "Cannot trace Branchy with torch.fx" in err
    assert "Neither front end" not in err  # fx alone was tried


@pytest.mark.parametrize("command", ["convert", "verify", "export", "train"])
def test_every_registered_rule_is_a_choice_of_the_command_line(command):
    """The parser lists rules by name (it must not import torch); a rule added to the registry
    and not to the command line fails here."""
    from pccompile.cli.parser import build_parser
    from pccompile.rules import RULES

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    rule = next(a for a in sub.choices[command]._actions if a.dest == "rule")
    assert set(RULES) - {"bp"} <= set(rule.choices), sorted(set(RULES) - set(rule.choices))
