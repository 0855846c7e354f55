"""The smaller rough edges of the newcomer's path (issue 26), each checked as a user meets it."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.energies import Gaussian


def test_a_learned_gaussian_takes_the_models_dtype_and_stays_the_same_parameter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))  # float32
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    g = Gaussian(2.0, learn=True)
    param = g.log_var
    opt = torch.optim.SGD([*net.parameters(), *g.parameters()], lr=0.1)  # before the first use
    pcm.learn(x, target=y, steps=4, energies={"0": g})
    assert g.log_var is param and param.dtype == torch.float32 and param.grad.dtype == torch.float32
    before = param.detach().clone()
    opt.step()
    assert not torch.equal(param.detach(), before)  # the optimiser updates the same object
    # a float64 model keeps the variance exactly
    g64 = Gaussian(0.3, learn=True)
    pcm64 = pccompile.convert(net.double(), x.double(), rule="il", loss_fn=F.cross_entropy)
    pcm64.learn(x.double(), target=y, steps=2, energies={"0": g64})
    assert g64.log_var.dtype == torch.float64
    assert g64.variance.item() == torch.tensor(0.3, dtype=torch.float64).item()


# ------------------------------------------------------------------------------ examples
def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_il_weak_feedback_prints_a_labelled_table_that_falls_with_k(capsys):
    table = _example("il_weak_feedback").main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("IL (T=400, gamma=0.1) vs BP") and "sum|g_IL - g_BP|" in out[1]
    assert out[2].split() == ["vertices", "k=1", "k=10", "k=100", "k=1000"]
    for name, row in table.items():
        assert row[1] > row[10] > row[100] > row[1000], (name, row)  # IL -> BP as k grows


def test_the_digits_example_writes_its_picture_under_out_not_the_current_folder(
    tmp_path, monkeypatch, capsys
):
    import pytest

    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    path = _example("train_digits_zil").main(["--epochs", "1"])
    assert path == tmp_path / "examples_out" / "zil_dynamics.png" or path.resolve() == (
        tmp_path / "examples_out" / "zil_dynamics.png"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples_out"]
    assert "epoch 1: test accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the CLI
MLP = ["tests/fixtures/other_factories.py:make_mlp", "--input-shape", "3,4"]


def _cli(capsys, *argv):
    from pathlib import Path

    from pccompile.cli import main

    root = Path(__file__).resolve().parent.parent
    argv = [str(root / a) if a.startswith("tests/") else a for a in argv]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_header_names_the_steps_it_runs_not_none(capsys):
    code, out, err = _cli(capsys, "verify", *MLP, "--rule", "il")
    assert code in (0, 1), err
    header = out.splitlines()[0]
    assert "steps=None" not in header and "steps=20 (the default)" in header
    code, out, _ = _cli(capsys, "verify", *MLP, "--steps", "5")
    assert "steps=5," in out.splitlines()[0]


def test_a_negative_or_nan_tolerance_is_refused(capsys):
    for bad in ("-1", "nan", "inf", "x"):
        code, out, err = _cli(capsys, "verify", *MLP, "--tol", bad)
        assert code == 2 and "--tol: must be a number >= 0" in err, (bad, err)
    code, out, err = _cli(capsys, "verify", *MLP, "--tol", "0", "-q")
    assert code in (0, 1) and out.strip().startswith(("PASS", "FAIL")), err


def test_the_package_has_a_license_file_and_metadata():
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (root / "LICENSE").read_text().startswith("MIT License")
    assert project["authors"] and project["keywords"]
    assert any(c.startswith("Programming Language :: Python :: 3") for c in project["classifiers"])


def _warning_factory(tmp_path):
    f = tmp_path / "warns.py"
    f.write_text(
        "import warnings\nimport torch.nn as nn\nINPUT_SHAPE = (2, 4)\n\n\ndef make():\n"
        "    warnings.warn('the factory warns\\n  on two lines', RuntimeWarning)\n"
        "    return nn.Sequential(nn.Linear(4, 3))\n"
    )
    return f"{f}:make"


def test_a_warning_during_a_command_is_one_line_without_a_source_path(tmp_path, capsys):
    import warnings

    spec = _warning_factory(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside pytest (which turns warnings into errors)
        code, out, err = _cli(capsys, "inspect", spec, "-q")
    assert code == 0, err
    assert err.strip().splitlines() == [
        "pccompile inspect: warning: RuntimeWarning: the factory warns on two lines"
    ]
    assert "warns.py" not in err and ".py:" not in err


class _Terminal:
    """A stderr that says it is a terminal and keeps what was written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_a_terminal_hears_from_the_command_before_torch_is_imported(monkeypatch, capsys):
    import pkgutil

    from pccompile.cli import main

    term = _Terminal()
    seen = []
    real = pkgutil.resolve_name

    def resolve(name):  # where the commands (and torch) are imported
        seen.append(term.text)
        return real(name)

    monkeypatch.setattr(pkgutil, "resolve_name", resolve)
    monkeypatch.setattr("sys.stderr", term)
    assert main(["completion", "bash"]) == 0
    assert seen == ["pccompile completion: starting (importing torch) ..."]
    assert term.text.endswith("\r")  # erased before the command's own output
    capsys.readouterr()
    monkeypatch.setattr(term, "isatty", lambda: False)
    term.text, seen[:] = "", []
    assert main(["completion", "bash"]) == 0 and seen == [""]  # not a terminal: nothing


def test_completion_for_zsh_and_fish(capsys):
    import subprocess

    code, zsh, err = _cli(capsys, "completion", "zsh")
    assert code == 0, err
    assert "bashcompinit" in zsh and "complete -o filenames -F _pccompile pccompile" in zsh
    check = subprocess.run(["bash", "-n"], input=zsh, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # zsh runs the bash script through bashcompinit
    code, fish, err = _cli(capsys, "completion", "fish")
    assert code == 0, err
    lines = fish.splitlines()
    assert all(ln.startswith(("#", "complete -c pccompile ")) for ln in lines)
    for sub in ("convert", "verify", "inspect", "export", "completion", "train"):
        assert any(f"__fish_use_subcommand -a {sub} " in ln for ln in lines), sub
    rule = [ln for ln in lines if "subcommand_from verify'" in ln and "-l rule " in ln]
    assert rule and "-x -a 'zil fpa il ipc epc mcpc'" in rule[0]
    assert any("subcommand_from train'" in ln and "-l rule-option -r" in ln for ln in lines)
    assert all(ln.count("'") % 2 == 0 for ln in lines if "\\'" not in ln)  # quotes balanced
    code, _, err = _cli(capsys, "completion", "powershell")
    assert code == 2 and "invalid choice" in err


def test_a_full_disk_while_converting_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    import pccompile.io.artifact as artifact

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch.save raises when the disk fills up
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 4864 vs 4808"
        )

    monkeypatch.setattr(artifact.torch, "save", full_disk)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "convert", *MLP, "-o", str(out))
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "internal error" not in line and "Errno" not in line
    assert f"Writing {str(out)!r} failed" in line and "MiB free" in line
    assert "free some space" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-written folder, no temp

    # an OSError ENOSPC from any write reads the same
    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifact.torch, "save", no_space)
    code, _, err = _cli(capsys, "convert", *MLP, "-o", str(out))
    assert code == 2 and "No space left on device" in err and "free some space" in err
    monkeypatch.setattr(artifact.torch, "save", real_save)
    assert _cli(capsys, "convert", *MLP, "-o", str(out), "-q")[0] == 0  # the check can pass


def test_verify_faithful_quiet_warns_in_one_line_without_a_source_path(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside pytest
        code, out, err = _cli(
            capsys, "verify", "tests/fixtures/masked_scores.py:make", "--mode", "faithful", "-q"
        )
    assert code == 0 and out.startswith("PASS"), err
    (line,) = err.strip().splitlines()  # -inf scores: the energy behind the front is not finite
    assert line.startswith("pccompile verify: warning: RuntimeWarning: The energy became non-")
    assert "verify.py" not in line and "pccompile/" not in line
