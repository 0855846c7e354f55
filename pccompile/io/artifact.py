"""The converted-model directory, format ``pccompile-converted/1``: save it, check it, reload it.

Reads (:func:`load_converted`): ``manifest.json`` (its ``format`` first: a missing manifest, an
unknown or a newer format is refused before anything else is read), then the model source the
manifest names (its factory code runs) and ``weights.pt`` (``torch.load(weights_only=True)``,
``strict=True``).
Writes (:func:`save_converted`, also behind ``pccompile convert``) one directory:

* ``weights.pt``: ``pcm.state_dict()`` (the original's keys);
* ``graph.graphml``: the PC graph (:func:`pccompile.io.render.write_graphml`);
* ``forward.py``: the traced forward (``pcm.code``), for reading;
* ``manifest.json``: ``format``, versions, the MODEL spec and how to rebuild the model
  (``model``; for a model file also ``model_relative``, its path relative to the directory, so
  the directory moves with its model file; ``num_classes``, ``dtype``, ``training``, ``seed``,
  ``input_shapes``,
  ``input_dtypes``, ``leaf_modules``, ``rule``), graph counts and the ``files`` table.

Invariants: the directory is published whole or not at all (:func:`atomic_output`); an existing
one is replaced only with ``overwrite=True`` and only when it holds nothing but what pccompile
wrote there (:func:`written_entries`: never a user's file or a nested output); a reader of format
``pccompile-converted/N`` reads every ``N`` up to its own and refuses newer ones, so a change that
an older reader would misread must bump :data:`FORMAT`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import pccompile

from ..api import convert
from ..errors import ConfigError
from ..modelspec import ModelSpecError, build_model, parse_spec
from ..module import PCModule
from ..rules import make_rule
from ..summary import graph_summary
from .atomic import atomic_output, check_output
from .render import mode_text, write_graphml
from .weights import load_weights

__all__ = [
    "FORMAT",
    "MANIFEST",
    "WEIGHTS",
    "GRAPH_FILE",
    "CODE_FILE",
    "ArtifactError",
    "save_converted",
    "load_converted",
    "read_manifest",
    "check_outdir",
    "written_entries",
]

FORMAT_NAME, FORMAT_VERSION = "pccompile-converted", 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
MANIFEST = "manifest.json"
WEIGHTS, GRAPH_FILE, CODE_FILE = "weights.pt", "graph.graphml", "forward.py"
FILES = {"weights": WEIGHTS, "graph": GRAPH_FILE, "code": CODE_FILE, "manifest": MANIFEST}
# Manifest keys in the order pccompile convert has always written them; other keys follow.
_ORDER = (
    "format",
    "pccompile_version",
    "torch_version",
    "model",
    "model_relative",
    "num_classes",
    "weights_source",
    "config",
    "dtype",
    "training",
    "seed",
    "input_shapes",
    "input_dtypes",
    "leaf_modules",
    "capture",
    "rule",
    "vertices",
    "depth",
    "steps",
    "parameters",
    "files",
)


class ArtifactError(ModelSpecError):
    """A converted-model directory cannot be written or read (message: what and the fix).

    A :class:`ModelSpecError` (what ``load_converted`` has always raised), so existing
    ``except ModelSpecError`` clauses keep working.
    """


# ------------------------------------------------------------------------------------ save
def save_converted(
    pcm: PCModule,
    outdir: str | os.PathLike,
    *,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``pcm`` to ``outdir`` in the ``pccompile-converted/1`` format, atomically.

    :func:`load_converted` rebuilds the model from its source, so the manifest must say where
    that is: ``extra["model"]``, a MODEL spec as on the command line (``"torchvision:NAME"``,
    ``"package.module:factory"`` or ``"path/to/file.py:factory"``; file paths are made
    absolute), and ``extra["num_classes"]`` when the factory takes it. Other ``extra`` keys
    (JSON values) are recorded as given; ``extra["seed"]`` seeds the example inputs the reload
    converts with (default 0).

    Args:
        pcm: a converted model; saved in its current training mode, with its current weights.
        outdir: the directory to write (its parent is created).
        overwrite: replace an existing ``outdir`` (only one pccompile wrote, or an empty one).
        extra: manifest entries: ``model`` (required), ``num_classes``, ``seed``, anything else.

    Returns:
        The manifest written to ``outdir/manifest.json``.

    Raises:
        ArtifactError: no or a bad MODEL spec, or ``pcm`` was converted with an option the
            format cannot record (``concrete_args``, ``level=False``, non-tensor inputs).
        ConfigError: ``extra`` sets a key this function writes, or holds a non-JSON value.
        OutputExistsError: ``outdir`` exists and ``overwrite`` is False, or is not ours.

    Example:
        >>> pcm = pccompile.convert(mypkg.nets.make_mlp(), torch.randn(3, 4), "fpa")
        >>> manifest = save_converted(pcm, "out/mlp", extra={"model": "mypkg.nets:make_mlp"})
        >>> pccompile.load_converted("out/mlp").rule
        FPA(...)
    """
    manifest = _manifest(pcm, dict(extra or {}), Path(outdir))
    text = json.dumps(manifest, indent=2) + "\n"
    where = os.fspath(outdir)
    with atomic_output(
        outdir, overwrite=overwrite, directory=True, replaceable=written_entries
    ) as tmp:
        torch.save(pcm.state_dict(), tmp / WEIGHTS)
        write_graphml(pcm.graph, tmp / GRAPH_FILE)
        (tmp / CODE_FILE).write_text(
            f"# Traced forward of {manifest['model']} ({mode_text(pcm.training)}), generated by "
            f"pccompile {manifest['pccompile_version']}.\n# For reading: reload the model with "
            f"pccompile.load_converted({where!r}).\n{pcm.code}"
        )
        (tmp / MANIFEST).write_text(text)
    return manifest


def check_outdir(outdir: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Check before any work that :func:`save_converted` may write ``outdir``: new, or (with
    ``overwrite``) empty or holding only what pccompile wrote there, in a writable folder.

    Raises:
        OutputExistsError: it exists and may not be replaced (the message lists what is foreign).
        OSError: its folder cannot be written.
    """
    check_output(outdir, overwrite=overwrite, directory=True, replaceable=written_entries)


def written_entries(outdir: Path) -> set[str]:
    """The entries of an existing converted-model directory that pccompile wrote: the manifest
    and the files its ``files`` table names (nothing when there is no readable manifest)."""
    try:
        man = json.loads((Path(outdir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not (isinstance(man, dict) and str(man.get("format", "")).startswith(FORMAT_NAME + "/")):
        return set()
    files = man.get("files") if isinstance(man.get("files"), dict) else {}
    return {MANIFEST, *(v for v in files.values() if isinstance(v, str) and "/" not in v)}


def _manifest(pcm: PCModule, extra: dict[str, Any], outdir: Path) -> dict[str, Any]:
    model = _model_spec(extra)
    relative = _relative_spec(model, outdir)
    own = {
        "format": FORMAT,
        "pccompile_version": pccompile.__version__,
        "torch_version": torch.__version__,
        "model": model,
        **({"model_relative": relative} if relative else {}),
        **_rebuild_entries(pcm),
        **_counts(pcm),
        "files": dict(FILES),
    }
    clash = sorted(k for k in extra if k in own and k != "model")
    if clash:
        raise ConfigError(
            f"save_converted writes {clash} itself; drop them from extra= (it is for the MODEL "
            f"spec, num_classes, seed and your own entries)."
        )
    if isinstance(extra.get("weights_source"), str):  # where the weights came from, movable too
        extra["weights_source"] = _relative_path(extra["weights_source"], outdir)
    manifest = {**own, **extra, "model": own["model"]}
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"extra= must hold JSON values (str, number, bool, None, lists, dicts): {exc}."
        ) from exc
    first = [k for k in _ORDER if k in manifest]
    return {k: manifest[k] for k in [*first, *(k for k in manifest if k not in _ORDER)]}


def _model_spec(extra: Mapping[str, Any]) -> str:
    text = extra.get("model")
    if not isinstance(text, str):
        raise ArtifactError(
            "save_converted needs the MODEL spec that rebuilds the model (load_converted builds "
            "it from source, then loads the saved weights): pass extra={'model': "
            "'package.module:factory'} (or 'path/to/file.py:factory', 'torchvision:NAME'), plus "
            "'num_classes' if the factory takes it."
        )
    return str(parse_spec(text).absolute())


def _relative_spec(spec_text: str, outdir: Path) -> str | None:
    """A file spec with its path relative to the artifact directory (so the directory and the
    model file can move together); None for torchvision and module specs."""
    spec = parse_spec(spec_text)
    if spec.kind != "file":
        return None
    return f"{_relative_path(spec.source, outdir)}:{spec.factory}"


def _relative_path(path: str, outdir: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), outdir.resolve())).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return str(Path(path).resolve())


def _rebuild_entries(pcm: PCModule) -> dict[str, Any]:
    """dtype, training mode, example input shapes/dtypes and leaf modules: what convert needs."""
    opts, example = pcm.capture_options, pcm.example_inputs
    if opts.concrete_args is not None:
        raise ArtifactError(
            "save_converted cannot record concrete_args=; convert without them to save the model "
            "(or save pcm.state_dict() and convert again yourself)."
        )
    options = {k: v for k, v in dataclasses.asdict(pcm.rule).items() if k != "name"}
    unrecordable = [
        k for k in ("energies", "value_optimizer", "optimizer") if options.get(k) not in (None, {})
    ]
    if unrecordable:
        raise ArtifactError(
            f"save_converted cannot record the rule's {unrecordable} (Python objects); save "
            f"with the rule's plain options and pass those to learn() after loading."
        )
    if not all(isinstance(t, torch.Tensor) for t in example):
        kinds = ", ".join(type(t).__name__ for t in example)
        raise ArtifactError(
            f"save_converted records example inputs as tensor shapes and dtypes, but this model "
            f"was converted with ({kinds}); convert it with tensor example inputs to save it."
        )
    floats = [t for t in [*pcm.parameters(), *pcm.buffers(), *example] if t.is_floating_point()]
    return {
        "dtype": _dtype_name(floats[0].dtype if floats else torch.float32),
        "training": bool(pcm.training),
        "input_shapes": [list(t.shape) for t in example],
        "input_dtypes": [_dtype_name(t.dtype) for t in example],
        "leaf_modules": _leaf_names(pcm, opts.leaf_modules),
        "capture": opts.capture,
        "level": opts.level,
        "granularity": opts.granularity,
        "rule": {"name": pcm.rule.name, "options": options},
    }


def _leaf_names(pcm: PCModule, leaves: tuple[type | str, ...]) -> list[str]:
    """Leaf modules by qualified name; a class stands for every submodule that is an instance."""
    names = [x for x in leaves if isinstance(x, str)]
    types = tuple(x for x in leaves if isinstance(x, type))
    if types:
        names += [q for q, m in pcm.original.named_modules() if q and isinstance(m, types)]
    return list(dict.fromkeys(names))


def _counts(pcm: PCModule) -> dict[str, Any]:
    s = graph_summary(pcm)
    return {
        "vertices": {"total": s["vertices"], **s["kinds"]},
        "depth": s["depth"],
        "steps": s["steps"],
        "parameters": s["parameters"],
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------ load
def read_manifest(outdir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a converted-model directory, after checking its ``format``.

    Raises:
        ArtifactError: no ``manifest.json``, not JSON, or a ``format`` other than
            ``pccompile-converted/N`` with ``N <= 1`` (a newer one names the upgrade).
    """
    path = Path(outdir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{os.fspath(outdir)!r} has no {MANIFEST}; give a directory written by pccompile "
            f"convert or pccompile.save_converted."
        )
    try:
        man = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{str(path)!r} is not a pccompile manifest ({type(exc).__name__}: {exc}); convert "
            f"the model again."
        ) from exc
    fmt = man.get("format") if isinstance(man, dict) else None
    name, _, version = fmt.partition("/") if isinstance(fmt, str) else ("", "", "")
    if name == FORMAT_NAME and version.isdigit() and int(version) > FORMAT_VERSION:
        raise ArtifactError(
            f"{str(path)!r} is format {fmt!r}, newer than this pccompile reads ({FORMAT}); "
            f"upgrade pccompile (pip install -U pccompile), or convert the model again with "
            f"this version."
        )
    if name != FORMAT_NAME or not version.isdigit() or int(version) < 1:
        found = f"format {fmt!r}" if fmt is not None else "no 'format' entry"
        raise ArtifactError(
            f"{str(path)!r} has {found}, not {FORMAT!r}: it was not written by pccompile convert "
            f"or save_converted; give such a directory, or convert the model again."
        )
    return man


def load_converted(outdir: str | os.PathLike, *, device: str | torch.device = "cpu") -> PCModule:
    """Rebuild a model written by ``pccompile convert`` or :func:`save_converted`.

    The manifest's format is checked first (:func:`read_manifest`). The model is rebuilt from
    the manifest's MODEL spec (its factory code runs: only load directories you trust the model
    source of), the weights are loaded from ``weights.pt`` with ``torch.load(weights_only=True)``
    and ``strict=True``, and the model is converted again with the manifest's rule, dtype,
    training mode, leaf modules and input shapes.

    Args:
        outdir: the directory ``pccompile convert ... -o OUTDIR`` or ``save_converted`` wrote.
        device: where to put the model.

    Returns:
        The converted ``PCModule``, in the training mode it was converted in.

    Raises:
        ArtifactError: no manifest, an unknown or newer format, or an unreadable manifest.
        ModelSpecError: the model cannot be rebuilt, or the weights do not fit it.

    Example:
        >>> pcm = pccompile.load_converted("out/resnet18")
        >>> logits = pcm.eval()(torch.randn(2, 3, 32, 32))
    """
    outdir = Path(outdir)
    man = read_manifest(outdir)
    try:
        spec = _spec_to_load(man, outdir)
        dtype = _dtype(man["dtype"])
        shapes = [tuple(s) for s in man["input_shapes"]]
        dtypes = [_dtype(d) for d in man.get("input_dtypes", [man["dtype"]] * len(shapes))]
        rule = make_rule(man["rule"]["name"], **man["rule"]["options"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(
            f"{str(outdir / MANIFEST)!r} is not a pccompile manifest ({type(exc).__name__}: "
            f"{exc}); convert the model again."
        ) from exc
    model = build_model(spec, man.get("num_classes"), config=man.get("config")).model.to(dtype)
    load_weights(model, outdir / man.get("files", {}).get("weights", WEIGHTS))
    model.to(device).train(bool(man.get("training", False)))
    gen = torch.Generator().manual_seed(int(man.get("seed") or 0))
    inputs = tuple(_example(s, d, gen).to(device) for s, d in zip(shapes, dtypes, strict=True))
    return convert(
        model,
        inputs if len(inputs) > 1 else inputs[0],
        rule,
        leaf_modules=man.get("leaf_modules", []),
        capture=man.get("capture", "auto"),  # manifests before the export front end: auto
        level=man.get("level", True),  # older manifests: always levelled, op vertices
        granularity=man.get("granularity", "op"),
    )


def _spec_to_load(man: dict[str, Any], outdir: Path) -> Any:
    """The MODEL spec to rebuild from: ``model_relative`` (a file path relative to the directory,
    written since the directory became movable) when that file exists, else ``model`` (absolute
    for files; what older manifests have)."""
    relative = man.get("model_relative")
    if isinstance(relative, str):
        spec = parse_spec(relative)
        moved = dataclasses.replace(spec, source=str(outdir / spec.source))
        if Path(moved.source).is_file() or not Path(parse_spec(man["model"]).source).is_file():
            return moved
    return parse_spec(man["model"])


def _dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, name) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name!r} is not a torch dtype")
    return dtype


def _example(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Standard normal for floating dtypes (as the CLI's random inputs), zeros otherwise."""
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=gen, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)
