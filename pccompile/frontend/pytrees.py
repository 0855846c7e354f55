"""Output structures: dataclass outputs become pytree nodes, as tuples, dicts and
``ModelOutput`` already are, so graphs can rebuild them and losses can read their fields.

Reads: a value a model returned (or any value a traced node produced).
Writes: torch's pytree registry, once per dataclass type (``torch.export.register_dataclass``,
which is what torch.export asks its users to do by hand).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.utils._pytree as pytree

__all__ = ["register_dataclasses"]


def register_dataclasses(value: Any) -> bool:
    """Register every dataclass type inside ``value`` that pytree does not know; True if any."""
    found = False
    stack = [value]
    while stack:
        obj = stack.pop()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            if type(obj) not in pytree.SUPPORTED_NODES:
                torch.export.register_dataclass(type(obj))
                found = True
            stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
    return found
