"""Hugging Face transformers models from a config file: ``transformers:ClassName --config FILE``.

Reads: a JSON model config (a checkpoint's ``config.json``, or one written by hand).
Writes: nothing; returns a randomly initialised model (nothing is downloaded), the default
example input shape and, for text models, the vocabulary size of its token-id inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn

from .errors import ModelSpecError
from .extras import require

__all__ = ["build_transformers"]


def build_transformers(
    name: str, config: str | os.PathLike | None, num_classes: int | None
) -> tuple[nn.Module, list[tuple[int, ...]], int | None]:
    """A Hugging Face transformers model, randomly initialised from a JSON config file (nothing
    is downloaded). The key/value cache is off (``use_cache=False``): a PC network has no use for
    it, and a cache object cannot be an output of the converted graph."""
    require("hf", "transformers:ClassName models")
    import transformers

    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and hasattr(cls, "config_class")):
        raise ModelSpecError(f"transformers has no model class {name!r}; check the spelling.")
    if config is None:
        raise ModelSpecError(
            f"transformers:{name} needs --config config.json (a model config such as "
            f"config.json of a checkpoint; weights are initialised at random, nothing is "
            f"downloaded)."
        )
    try:
        fields = json.loads(Path(config).read_text())
    except (OSError, ValueError) as exc:
        raise ModelSpecError(
            f"--config {str(config)!r} is not a readable JSON file: {exc}."
        ) from exc
    if num_classes is not None:
        fields["num_labels"] = num_classes
    cfg = cls.config_class(**{**fields, "use_cache": False})
    model = cls(cfg)
    vocab = getattr(cfg, "vocab_size", None)
    if "input_ids" in getattr(model, "main_input_name", "input_ids") and vocab:
        return model, [(2, 8)], int(vocab)
    side = int(getattr(cfg, "image_size", 32))
    return model, [(2, int(getattr(cfg, "num_channels", 3)), side, side)], None
