"""MODEL specs: parse ``torchvision:NAME``, ``transformers:ClassName``,
``package.module:factory`` and ``path/to/file.py:factory``, build the model, make random example
inputs (weights files: :mod:`pccompile.io.weights`).

Reads: a spec string, the module or file it names (its code runs).
Writes nothing (a converted model's directory is :mod:`pccompile.io.artifact`'s).
Invariants: torchvision models are always built with ``weights=None`` (nothing is downloaded);
weights load with ``strict=True``. ``package.module`` is imported with the current folder on
``sys.path`` (as ``python -m`` has it), ``pkgutil.resolve_name`` finds the factory; a model file
is imported under a module name that depends only on its resolved path (the same in every
process, so what pickle records of its classes resolves again). Every failure is a
:class:`ModelSpecError` whose message is one line saying what happened and how to fix it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from .errors import ModelSpecError
from .hf_models import build_transformers
from .preserve import preserved

__all__ = [
    "ModelSpec",
    "ModelSpecError",
    "parse_spec",
    "parse_shapes",
    "build_model",
    "random_inputs",
    "check_forward",
    "check_leaf_modules",
    "file_module_name",
]

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
SpecKind = Literal["torchvision", "transformers", "module", "file"]
FORMS = (
    "torchvision:NAME, transformers:ClassName (with --config), package.module:factory or "
    "path/to/file.py:factory"
)

# Torchvision families that need a fixed input size; everything else gets a CPU-friendly 32x32.
_TV_SHAPES: dict[str, Shape] = {
    "vit_": (1, 3, 224, 224),
    "swin": (1, 3, 224, 224),
    "maxvit": (1, 3, 224, 224),
    "inception_v3": (2, 3, 299, 299),
}
TORCHVISION_DEFAULT_SHAPE: Shape = (2, 3, 32, 32)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed MODEL argument.

    Attributes:
        kind: ``"torchvision"``, ``"module"`` (importable module) or ``"file"`` (a ``.py`` path).
        source: the torchvision model name, the module's dotted name, or the file path.
        factory: the callable's (dotted) name inside the module; ``""`` for torchvision.
    """

    kind: SpecKind
    source: str
    factory: str = ""

    def __str__(self) -> str:
        if self.kind in ("torchvision", "transformers"):
            return f"{self.kind}:{self.source}"
        return f"{self.source}:{self.factory}"

    def absolute(self) -> ModelSpec:
        """The same spec with a file path made absolute (so a manifest can be reloaded anywhere)."""
        if self.kind != "file":
            return self
        return ModelSpec("file", str(Path(self.source).resolve()), self.factory)


def parse_spec(text: str) -> ModelSpec:
    """Parse a MODEL argument.

    Raises:
        ModelSpecError: the text has none of the three forms.

    Example:
        >>> parse_spec("torchvision:resnet18")
        ModelSpec(kind='torchvision', source='resnet18', factory='')
    """
    text = text.strip()
    if ":" not in text:
        hint = (
            f" (did you mean {text}:<factory>?)"
            if text.endswith(".py")
            else (f" (did you mean torchvision:{text}?)" if text.isidentifier() else "")
        )
        raise ModelSpecError(f"MODEL {text!r} has no ':'; write one of {FORMS}{hint}.")
    source, factory = text.rsplit(":", 1)
    if not source or not factory:
        raise ModelSpecError(f"MODEL {text!r} is incomplete; write one of {FORMS}.")
    if source in ("torchvision", "transformers"):
        return ModelSpec(source, factory)
    if source.endswith(".py") or "/" in source or os.sep in source:
        return ModelSpec("file", source, factory)
    if all(part.isidentifier() for part in source.split(".")):
        return ModelSpec("module", source, factory)
    raise ModelSpecError(
        f"MODEL {text!r}: {source!r} is neither 'torchvision', a dotted module name, nor a .py "
        f"path; write one of {FORMS}."
    )


def parse_shapes(texts: Sequence[str]) -> list[Shape]:
    """Parse ``--input-shape`` values (``"2,3,32,32"``; several flags for several inputs).

    Raises:
        ModelSpecError: a value is not a comma-separated list of positive integers.
    """
    shapes = []
    for text in texts:
        try:
            shape = tuple(int(p) for p in text.split(","))
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise ModelSpecError(
                f"--input-shape {text!r} is not a shape; write positive integers separated by "
                f"commas, batch first (e.g. --input-shape 2,3,32,32)."
            )
        shapes.append(shape)
    return shapes


@dataclass
class Built:
    """A model built from a spec, with the input shape(s) its source suggests (may be empty)."""

    model: nn.Module
    default_shapes: list[Shape]
    vocab_size: int | None = None  # token-id inputs: integers in [0, vocab_size)


def build_model(
    spec: ModelSpec, num_classes: int | None = None, config: str | os.PathLike | None = None
) -> Built:
    """Build the ``nn.Module`` a spec names (torchvision models always with ``weights=None``).

    A factory is called with no arguments, or with ``num_classes=N`` when ``num_classes`` is
    given. A factory's module may define ``INPUT_SHAPE`` (a shape, or a list of shapes for several
    inputs), used when ``--input-shape`` is not given.

    Raises:
        ModelSpecError: unknown torchvision model, missing module/file/factory, a factory that
            fails or does not return an ``nn.Module``.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if spec.kind == "transformers":
        model, shapes, vocab = build_transformers(spec.source, config, num_classes)
        return Built(model, shapes, vocab)
    if config is not None:
        raise ModelSpecError(f"--config is for transformers:ClassName models, not {spec}.")
    if spec.kind == "torchvision":
        return Built(_torchvision(spec.source, kwargs), [_tv_shape(spec.source)])
    with _on_sys_path(os.getcwd()):  # as `python -m` has it, also for the installed script
        return _build_from_factory(spec, kwargs, num_classes)


def _build_from_factory(spec: ModelSpec, kwargs: dict, num_classes: int | None) -> Built:
    module = _import_file(spec.source) if spec.kind == "file" else _import_module(spec.source)
    factory = _attr(module, spec)
    if not callable(factory):
        raise ModelSpecError(
            f"{spec} is a {type(factory).__name__}, not a callable; point MODEL at a function or "
            f"class that returns an nn.Module."
        )
    try:
        model = factory(**kwargs)
    except Exception as exc:
        extra = (
            " (drop --num-classes, or give the factory a num_classes parameter)"
            if (kwargs and isinstance(exc, TypeError))
            else ""
        )
        raise ModelSpecError(
            f"The factory {spec} raised {type(exc).__name__}: {short_line(exc)}; fix the factory "
            f"so that calling it{' with num_classes=' + str(num_classes) if kwargs else ''} "
            f"returns an nn.Module{extra}."
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"The factory {spec} returned a {type(model).__name__}, not an nn.Module; make it "
            f"return the model (e.g. `return MyNet()`)."
        )
    return Built(model, _module_shapes(module, spec))


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = (
            f"did you mean {', '.join('torchvision:' + c for c in close)}?"
            if close
            else ("see torchvision.models.list_models() for the names")
        )
        raise ModelSpecError(f"torchvision has no model {name!r}; {hint}")
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise ModelSpecError(
            f"torchvision.models.get_model({name!r}, weights=None, {kwargs}) failed: "
            f"{type(exc).__name__}: {short_line(exc)}; check --num-classes."
        ) from exc


def _tv_shape(name: str) -> Shape:
    for prefix, shape in _TV_SHAPES.items():
        if name.startswith(prefix):
            return shape
    return TORCHVISION_DEFAULT_SHAPE


@contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the block runs (unless it is there already)."""
    if folder in sys.path or (folder == os.getcwd() and "" in sys.path):
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and not (name == missing or name.startswith(missing + ".")):
            raise ModelSpecError(
                f"Importing module {name!r} failed: it imports {missing!r}, which is not "
                f"installed ({short_line(exc)}); install it."
            ) from exc
        raise ModelSpecError(
            f"Cannot import module {name!r} ({short_line(exc)}) from the current folder "
            f"{os.getcwd()} or the installed packages; run from the folder that holds it, add "
            f"that folder to PYTHONPATH, install it, or pass a file instead "
            f"(path/to/file.py:factory)."
        ) from exc
    except Exception as exc:
        raise ModelSpecError(
            f"Importing module {name!r} raised {type(exc).__name__}: {short_line(exc)}; fix the "
            f"module so that it imports."
        ) from exc


def _import_file(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ModelSpecError(
            f"Model file {path!r} does not exist; check the path (relative paths are taken from "
            f"{os.getcwd()})."
        )
    name = file_module_name(p)
    loader_spec = importlib.util.spec_from_file_location(name, p)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelSpecError(f"Cannot load {path!r} as Python; give a .py file.")
    module = importlib.util.module_from_spec(loader_spec)
    # The file may import its siblings; its folder is on sys.path while it runs.
    sys.path.insert(0, str(p.resolve().parent))
    sys.modules[name] = module  # so classes defined there can be found (e.g. by copy/pickle)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelSpecError(
            f"Running model file {path!r} raised {type(exc).__name__}: {short_line(exc)}; fix the "
            f"file so that it imports."
        ) from exc
    finally:
        sys.path.remove(str(p.resolve().parent))
    return module


def file_module_name(path: str | os.PathLike) -> str:
    """The module name a model file is imported under: ``pccompile_model_<stem>_<digest>``, the
    digest of its resolved path. It is the same in every process (Python's ``hash`` of a string
    is not), so an object pickled in one process finds its class again in another once the
    same file has been loaded there (``build_model``, ``load_converted``)."""
    resolved = str(Path(path).resolve())
    stem = re.sub(r"\W", "_", Path(resolved).stem)
    return f"pccompile_model_{stem}_{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"


def _attr(module: Any, spec: ModelSpec) -> Any:
    try:  # the stdlib's "module:qualname" resolution, on the module imported above
        return pkgutil.resolve_name(f"{module.__name__}:{spec.factory}")
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(spec.factory, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "check the name after ':'."
        raise ModelSpecError(f"{spec.source!r} has no attribute {spec.factory!r}; {hint}") from None


def _module_shapes(module: Any, spec: ModelSpec) -> list[Shape]:
    shape = getattr(module, "INPUT_SHAPE", None)
    if shape is None:
        return []
    try:
        if all(isinstance(d, int) for d in shape):
            return [tuple(shape)]
        return [tuple(int(d) for d in s) for s in shape]
    except TypeError as exc:
        raise ModelSpecError(
            f"INPUT_SHAPE in {spec.source!r} is {shape!r}; make it a tuple of ints, e.g. "
            f"INPUT_SHAPE = (2, 5, 8), or a list of such tuples for several inputs."
        ) from exc


# Keys under which training scripts commonly nest the state_dict in a checkpoint.
def check_leaf_modules(model: nn.Module, names: Iterable[str]) -> None:
    """Refuse a ``--leaf-module`` name that is not a submodule of ``model`` (a typo would be
    ignored by the tracer and the module traced through).

    Raises:
        ModelSpecError: naming the unknown names and the closest submodule names.
    """
    known = [n for n, _ in model.named_modules() if n]
    unknown = [n for n in names if isinstance(n, str) and n not in set(known)]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, known, n=3)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else f"its submodules include {', '.join(known[:6])}{' ...' if len(known) > 6 else ''}."
        if known
        else "it has no submodules."
    )
    raise ModelSpecError(
        f"--leaf-module {name!r} is not a submodule of the model (a qualified name as in "
        f"model.named_modules(), e.g. layer1.0); {hint}"
    )


def random_inputs(
    shapes: Sequence[Shape], dtype: torch.dtype, seed: int, vocab_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Standard-normal inputs of the given shapes (token ids in ``[0, vocab_size)`` when it is
    given), from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    if vocab_size:
        return tuple(torch.randint(0, vocab_size, s, generator=gen) for s in shapes)
    return tuple(torch.randn(s, generator=gen, dtype=dtype) for s in shapes)


def check_forward(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], training: bool = False
) -> Any:
    """Run ``model`` once (no grad, in the given mode) and turn a failure into a one-line shape
    error.

    Returns the output (its structure decides the default loss: googlenet and inception return
    auxiliary heads in training mode). The training flag, buffers and RNG state are restored.

    Raises:
        ModelSpecError: the model rejects inputs of these shapes.
    """
    try:
        with preserved(model, *inputs, training=training), torch.no_grad():
            return model(*inputs)
    except Exception as exc:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise ModelSpecError(
            f"The model rejected input(s) of shape {shapes}: {type(exc).__name__}: "
            f"{short_line(exc)}; pass the shape it expects with --input-shape (batch first, "
            f"comma-separated, one flag per input)."
        ) from exc


def few(items: list[str], n: int = 3) -> str:
    """The first ``n`` items for a message, and how many there are in all."""
    shown = ", ".join(items[:n])
    return f"[{shown}{f', ... {len(items)} in all' if len(items) > n else ''}]"


def short_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 300 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message onto one line."""
    return " ".join(str(text).split())
