"""The ``pccompile`` argument parser: subcommands convert, verify, inspect, export, train,
completion.

Reads nothing, writes nothing: :func:`build_parser` only describes the options, with examples
and defaults in ``--help``; each subcommand's ``handler`` default is the *name* of its function
(``module:function``, :mod:`pccompile.cli.commands`), imported only once the arguments are parsed.
Invariants: importing this module imports neither torch nor the commands (``pccompile --help``
answers in a fraction of a second); every model subcommand takes the model options (MODEL,
``--input-shape``, ``--weights``, ``--dtype``, ...) and the output options (``-q``, ``-v``,
``--json``, ``--debug``); convert and verify also take the rule options.
"""

from __future__ import annotations

import argparse

from .. import __version__
from .base import DTYPE_NAMES

__all__ = ["build_parser", "FORMS"]

Parser = argparse.ArgumentParser
_COMMANDS = "pccompile.cli.commands"  # imported (with torch) only after parsing
FORMS = "torchvision:NAME, package.module:factory or path/to/file.py:factory"

EXAMPLES = {
    None: """\
examples:
  pccompile verify  torchvision:resnet18 --num-classes 10     # Z-IL == backprop? (exit 0/1)
  pccompile convert torchvision:resnet18 -o out/r18           # weights, graph, code, manifest
  pccompile inspect models.py:make_net --input-shape 8,3,32,32 --format png -o graph.png
  pccompile export  torchvision:resnet18 -o r18.onnx --graph energy   # needs pccompile[onnx]
  pccompile train   --data digits --rule zil --epochs 10 --compare bp -o runs/zil

MODEL is torchvision:NAME (never downloads weights), package.module:factory (importable from
the current folder, as with python -m), or path/to/file.py:factory; the factory's code runs.
`pccompile COMMAND --help` lists a command's options.
exit codes: 0 ok, 1 a check failed (verify, the ONNX comparison), 2 bad input, 3 internal error,
130 interrupted.""",
    "convert": """\
examples:
  pccompile convert torchvision:resnet18 --num-classes 10 -o out/r18
  pccompile convert models.py:make_net --input-shape 8,3,32,32 --rule fpa -o out/net
then, in Python: pcm = pccompile.load_converted("out/r18")""",
    "verify": """\
examples:
  pccompile verify torchvision:resnet18 --num-classes 10
  pccompile verify models.py:make_net --input-shape 8,3,32,32 --train-steps 3
  pccompile verify torchvision:resnet18 --gamma 0.5     # not exact: exits 1
exit code 0 only when every parameter is within the tolerance, 1 otherwise.""",
    "inspect": """\
examples:
  pccompile inspect torchvision:resnet18
  pccompile inspect torchvision:resnet18 --format png -o r18.png     # needs pccompile[plot]
  pccompile inspect models.py:make_net --input-shape 8,3,32,32 --format graphml -o net.graphml""",
    "export": """\
examples:
  pccompile export torchvision:resnet18 -o r18.onnx                  # needs pccompile[onnx]
  pccompile export torchvision:resnet18 -o r18_energy.onnx --graph energy
  pccompile export models.py:make_net --input-shape 8,1,8,8 --graph learn -o step.onnx
the batch dimension is dynamic where the model allows it (the JSON report says so).""",
    "train": """\
examples:
  pccompile train --data digits --rule zil --epochs 10 -o runs/zil --compare bp
  pccompile train torchvision:resnet18 --data ~/data/cifar-10-batches-bin --optimizer adam -o r18
  pccompile train --data digits --epochs 20 -o runs/zil --resume     # continue runs/zil
  pccompile train --data digits --rule il --rule-option output=free --trace -o runs/il-free
writes OUT/metrics.json, model.pt, curves.png and checkpoint.pt (every epoch, atomically).""",
    "completion": """\
examples:
  eval "$(pccompile completion bash)"                                   # this shell
  pccompile completion bash > ~/.local/share/bash-completion/completions/pccompile
  eval "$(pccompile completion zsh)"                                    # zsh (bashcompinit)
  pccompile completion fish > ~/.config/fish/completions/pccompile.fish""",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and appends ``(default: X)`` where there is a default
    worth saying (not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and not (default is None or default is False or default == [])
            and default is not argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def tolerance(text: str) -> float:
    """``--tol``: a finite number >= 0 (0 asks for equality)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(
            f"must be a number >= 0 (0: equal; e.g. 1e-4), got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pccompile`` argument parser (subcommands convert, verify, inspect, export,
    completion, train)."""
    common, rule = _common_options(), _rule_options()
    parser = argparse.ArgumentParser(
        prog="pccompile",
        description="Convert PyTorch models into predictive-coding networks whose Z-IL updates "
        "equal backprop's.",
        epilog=EXAMPLES[None],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pccompile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_convert(sub, common, rule)
    _add_verify(sub, common, rule)
    _add_inspect(sub, common)
    _add_export(sub, common, rule)
    _add_completion(sub)
    _add_train(sub)  # after completion: the completion script's command list keeps its order
    return parser


def _sub(sub: argparse._SubParsersAction, name: str, parents: list[Parser], help: str) -> Parser:
    return sub.add_parser(
        name,
        parents=parents,
        help=help,
        description=help[:1].upper() + help[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=HelpFormatter,
    )


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    m = common.add_argument_group("model")
    m.add_argument("model", metavar="MODEL", help=f"one of {FORMS}")
    m.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="input shape, batch first, e.g. 2,3,32,32; repeat for several inputs "
        "(default: 2,3,32,32 for torchvision; a factory's module INPUT_SHAPE)",
    )
    m.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="torchvision: num_classes=N; factories: called with num_classes=N",
    )
    m.add_argument(
        "--weights",
        metavar="FILE",
        help="state_dict file, or a checkpoint {'state_dict': ...} (torch.load(weights_only=True), "
        "strict keys)",
    )
    m.add_argument(
        "--config",
        metavar="FILE",
        help="JSON model config for transformers:ClassName (random init, nothing downloaded)",
    )
    m.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="model and input dtype")
    m.add_argument(
        "--train-mode",
        action="store_true",
        help="convert in training mode (BatchNorm batch statistics, dropout)",
    )
    m.add_argument(
        "--leaf-module",
        action="append",
        default=[],
        metavar="NAME",
        help="keep submodule NAME (a qualified name such as layer1.0) as one opaque vertex, for "
        "untraceable code; repeatable",
    )
    m.add_argument(
        "--capture",
        choices=("auto", "fx", "export"),
        default="auto",
        help="front end: torch.fx tracing, torch.export (ATen vertices; follows size-dependent "
        "code such as Hugging Face transformers), or auto (fx, then export if fx fails)",
    )
    m.add_argument(
        "--granularity",
        choices=("op", "layer"),
        default=None,
        help="value nodes per op, or per layer (a parametric op and the ops after it); default: "
        "the rule's (op for zil/fpa, layer for il/ipc)",
    )
    m.add_argument("--seed", type=int, default=0, help="seed of weights init and random data")
    o = common.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress, no tables")
    o.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what is done on stderr (-vv: more detail)",
    )
    o.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    o.add_argument(
        "--debug", action="store_true", help="show tracebacks (the exit code stays the same)"
    )
    return common


def _rule_options() -> argparse.ArgumentParser:
    rule = argparse.ArgumentParser(add_help=False)
    r = rule.add_argument_group("rule")
    r.add_argument(
        "--rule",
        choices=["zil", "fpa", "il", "ipc", "epc", "mcpc"],
        default="zil",
        help="learning rule",
    )
    r.add_argument("--gamma", type=float, help="inference step size (exact only at 1)")
    r.add_argument("--steps", type=int, help="inference steps (default: the rule's)")
    r.add_argument("--mode", choices=["auto", "efficient", "faithful"], help="schedule (zil/fpa)")
    return rule


def _add_convert(sub: argparse._SubParsersAction, common: Parser, rule: Parser) -> None:
    p = _sub(
        sub, "convert", [common, rule], "convert and write weights, graph, code and a manifest"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="directory to write")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an OUTDIR that pccompile wrote (never one holding anything else)",
    )
    p.set_defaults(handler=f"{_COMMANDS}:cmd_convert")


def _add_verify(sub: argparse._SubParsersAction, common: Parser, rule: Parser) -> None:
    p = _sub(sub, "verify", [common, rule], "one learn step with the rule vs backprop")
    p.add_argument(
        "--tol", type=tolerance, help="relative L1 tolerance (default 1e-4; 1e-10 float64)"
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        metavar="N",
        help="also train a BP copy and a PC copy side by side for N optimizer steps (2 "
        "accumulated micro-batches each, clipping, momentum, weight decay) and require every "
        ".grad, parameter and buffer to stay within --tol of BP's (0: one step only)",
    )
    p.add_argument(
        "--habit",
        action="append",
        choices=_habit_names(),
        help="with --train-steps: a loop habit applied to both copies between steps "
        "(repeatable): eval-toggle (train/eval alternated), freeze-first (the first layer "
        "frozen at step 1, unfrozen at step 2), lr-decay (halved each step), float64 "
        "(.double() at step 1)",
    )
    p.set_defaults(handler=f"{_COMMANDS}:cmd_verify")


def _habit_names() -> list[str]:
    # the names only: importing pccompile.testing (torch) at parse time would slow the CLI
    return ["eval-toggle", "freeze-first", "lr-decay", "float64"]


def _add_inspect(sub: argparse._SubParsersAction, common: Parser) -> None:
    p = _sub(sub, "inspect", [common], "the PC graph: vertices, levels, steps, pictures")
    p.add_argument(
        "--format",
        choices=["text", "json", "graphml", "dot", "png", "svg"],
        default="text",
        help="text/json/graphml/dot to stdout or -o; png/svg: a drawing of the leveled graph "
        "(needs -o and pccompile[plot])",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write there instead of stdout")
    p.add_argument("--png", metavar="FILE", help="also draw the leveled graph to FILE (.png)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(handler=f"{_COMMANDS}:cmd_inspect")


def _add_export(sub: argparse._SubParsersAction, common: Parser, rule: Parser) -> None:
    p = _sub(sub, "export", [common, rule], "ONNX of the prediction, the PC energy or a learn step")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file")
    p.add_argument(
        "--graph",
        choices=["predict", "energy", "learn", "il-learn"],
        default="predict",
        help="the model's forward; the PC network's errors and energy; one Z-IL learning step "
        "(inputs, target, parameters -> loss, grad.<parameter>); one IL step (--gamma, "
        "--steps; docs/export.md); learn graphs run in the model's mode (--train-mode: "
        "BatchNorm on batch statistics, its running statistics as new.<buffer> outputs)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip onnx.checker and the onnxruntime comparison"
    )
    p.add_argument("--tol", type=tolerance, default=1e-4, help="max abs diff allowed")
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="fix the batch dimension to --input-shape's (default: dynamic where possible)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(handler=f"{_COMMANDS}:cmd_export")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with a PC rule on a data set (resumable; --compare bp)",
        description="Train MODEL (default: a small residual CNN) on --data with a PC rule.",
        epilog=EXAMPLES["train"],
        formatter_class=HelpFormatter,
    )
    m = p.add_argument_group("model and data")
    m.add_argument(
        "model", metavar="MODEL", nargs="?", help=f"one of {FORMS} (default: a residual CNN)"
    )
    m.add_argument(
        "--data",
        required=True,
        metavar="D",
        help="digits (embedded, needs pccompile[data]), fashion-mnist (apt-get install "
        "dataset-fashion-mnist), mnist1d (generated, pccompile[data]), or a directory of "
        "MNIST IDX files, CIFAR-10 binary batches or images (CLASS/x.png, or train/ and "
        "test/); never downloads",
    )
    m.add_argument("--num-classes", type=int, metavar="N", help="passed to the model factory")
    m.add_argument("--weights", metavar="FILE", help="initial state_dict for MODEL")
    m.add_argument("--seed", type=int, default=0, help="seed of the init and the data order")
    r = p.add_argument_group("rule")
    r.add_argument(
        "--rule",
        choices=["zil", "fpa", "il", "ipc", "epc", "mcpc", "bp"],
        default="zil",
        help="learning rule",
    )
    r.add_argument("--gamma", type=float, help="inference step size (exact only at 1)")
    r.add_argument("--steps", type=int, help="inference steps (default: the rule's)")
    r.add_argument("--mode", choices=["auto", "efficient", "faithful"], help="schedule (zil/fpa)")
    r.add_argument(
        "--rule-option",
        action="append",
        metavar="KEY=VALUE",
        help="any option of the rule's config, repeatable: output=free, output_precision=0.5, "
        "lr=0.01 (ipc), 'precision={\"fc2\": 4.0}', compile=true (VALUE as JSON, else a string)",
    )
    r.add_argument(
        "--granularity",
        choices=["op", "layer"],
        help="vertex granularity (default: the rule's: layer for il/ipc, op for zil/fpa)",
    )
    r.add_argument(
        "--trace",
        action="store_true",
        help="record each epoch's last batch's inference and draw it as OUT/trace_epoch<k>.png",
    )
    r.add_argument(
        "--compare",
        choices=["bp"],
        help="also train a BP copy from the same weights on the same batches; metrics get bp_* "
        "columns and max_param_diff",
    )
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=1, help="epochs in all (a resume continues)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (last partial dropped)")
    t.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="optimizer")
    t.add_argument("--lr", type=float, help="learning rate (default: 0.05 sgd, 0.001 adam)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="cosine: lr * (1 + cos(pi s/S)) / 2 at step s of S (all epochs' batches)",
    )
    t.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    t.add_argument(
        "--limit-batches", type=int, metavar="N", help="at most N batches per epoch (quick runs)"
    )
    t.add_argument(
        "--dtype",
        choices=["float32", "float64", "bfloat16"],
        help="cast the model and the images to this dtype (default: the model's own)",
    )
    t.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads(N)")
    t.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (under torchrun, cuda is each rank's LOCAL_RANK GPU)",
    )
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", required=True, metavar="OUT", help="directory to write")
    o.add_argument("--force", action="store_true", help="replace an OUT that pccompile train wrote")
    o.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress, no per-epoch lines")
    o.add_argument("-v", "--verbose", action="count", default=0, help="log on stderr")
    o.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    o.add_argument(
        "--debug", action="store_true", help="show tracebacks (the exit code stays the same)"
    )
    p.set_defaults(handler="pccompile.cli.train:cmd_train")


def _add_completion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for the shell.",
        epilog=EXAMPLES["completion"],
        formatter_class=HelpFormatter,
    )
    p.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell")
    p.set_defaults(
        handler="pccompile.cli.completion:cmd_completion",
        json=False,
        debug=False,
        quiet=False,
        verbose=0,
    )
