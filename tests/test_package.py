"""The package as a user meets it: ``import pccompile`` is light and lazy, ``pccompile.plot`` is
there after it, the version comes from the installed metadata, type information ships
(``py.typed``), and ordinary PyTorch habits (forward hooks on the model) keep working."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys

import torch
import torch.nn as nn

import pccompile


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_pccompile_is_lazy_and_plot_is_an_attribute():
    proc = _fresh(
        "import sys, pccompile\n"
        "assert 'torch' not in sys.modules, 'import pccompile imported torch'\n"
        "print(pccompile.plot.plot_trace.__name__, pccompile.convert.__name__)\n"
        "print(type(pccompile.io).__name__, 'ZIL' in dir(pccompile))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["plot_trace", "convert", "module", "True"]


def test_unknown_attributes_are_attribute_errors():
    try:
        pccompile.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_version_is_the_installed_distributions():
    assert pccompile.__version__ == importlib.metadata.version("pccompile")


def test_py_typed_ships_with_the_package():
    assert (importlib.resources.files("pccompile") / "py.typed").is_file()


def test_forward_hooks_on_the_models_root_fire_on_the_converted_module():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(2, 4)
    calls: list[str] = []
    seen: list[torch.Tensor] = []
    # observing hooks, the usual kind (logging, TensorBoard, feature capture); a root hook that
    # changes values is refused at convert time by the front end's trace-vs-eager check
    net.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    net.register_forward_hook(lambda m, args, out: calls.append("post") or seen.append(out))
    net[0].register_forward_hook(lambda m, args, out: calls.append("child"))
    with torch.no_grad():
        expected = net(x)
        calls.clear()
        pcm = pccompile.convert(net, x)
        calls.clear()
        got = pcm(x)
    assert calls == ["pre", "child", "post"]
    assert torch.equal(got, expected) and torch.equal(seen[-1], got)
    mine: list[str] = []
    pcm.register_forward_hook(lambda m, args, out: mine.append("pcm"))
    with torch.no_grad():
        pcm(x)
    assert mine == ["pcm"]
