"""Why a registry function or method has no case: the explicit skip list, and the reasons the
catalogue gives for private names, attribute getters and Tensor dunder methods."""

from __future__ import annotations

FUNCTION_SKIPS: list[tuple[str, str]] = [
    ("torch.sym_*", "SymInt/SymFloat arithmetic for symbolic shapes: no tensor values"),
    ("torch._sym_*", "SymInt/SymFloat arithmetic for symbolic shapes: no tensor values"),
    ("torch.amp.autocast_mode.autocast", "a context manager, not a tensor op"),
    ("torch.fbgemm_*", "FBGEMM quantized kernels: no float gradient"),
    ("torch.miopen_*", "MIOpen (AMD GPU) kernels: not on CPU"),
    ("torch.quantize*", "produces quantized tensors"),
    ("torch.quantized_*", "operates on quantized tensors"),
    ("torch.q_*", "operates on quantized tensors"),
    ("Tensor.q_*", "operates on quantized tensors"),
    ("torch.fake_quantize*", "quantization-aware-training kernel"),
    ("torch.fused_moving_avg*", "quantization-aware-training kernel"),
    ("torch.choose_qparams*", "quantization parameters"),
    ("torch.batch_norm_*", "BatchNorm backward/statistics kernels (internal pieces of batch_norm)"),
    ("torch.native_norm", "internal kernel of torch.norm"),
    ("Tensor.cuda", "moves to CUDA"),
    ("Tensor.xpu", "moves to an XPU"),
    ("Tensor.ipu", "moves to an IPU"),
    ("Tensor.mtia", "moves to an MTIA device"),
    ("Tensor.pin_memory", "needs an accelerator"),
    ("Tensor.record_stream", "CUDA streams"),
    ("Tensor.to_mkldnn", "MKL-DNN layout"),
    ("Tensor.to_sparse", "sparse layout"),
    ("Tensor.sparse_mask", "sparse layout"),
    ("Tensor.smm", "sparse layout"),
    ("torch.smm", "sparse layout"),
    ("torch.hsmm", "sparse layout"),
    ("torch.saddmm", "sparse layout"),
    ("Tensor.sspaddmm", "sparse layout"),
    ("Tensor.coalesce", "sparse layout"),
    ("Tensor.is_coalesced", "sparse layout"),
    ("Tensor.indices", "sparse layout"),
    ("Tensor.values", "sparse layout"),
    ("torch.indices_copy", "sparse layout"),
    ("torch.values_copy", "sparse layout"),
    ("Tensor.crow_indices", "sparse layout"),
    ("Tensor.ccol_indices", "sparse layout"),
    ("Tensor.col_indices", "sparse layout"),
    ("Tensor.row_indices", "sparse layout"),
    ("torch.crow_indices_copy", "sparse layout"),
    ("torch.ccol_indices_copy", "sparse layout"),
    ("torch.col_indices_copy", "sparse layout"),
    ("torch.row_indices_copy", "sparse layout"),
    ("torch.view_as_complex*", "complex outputs (the loss is over real floating outputs)"),
    ("torch.view_as_real*", "needs complex inputs"),
    ("Tensor.storage*", "storage objects, not tensors"),
    ("Tensor.untyped_storage", "storage objects, not tensors"),
    ("Tensor.module_load", "a state_dict loading hook"),
    ("Tensor.register_post_accumulate_grad_hook", "an autograd hook"),
    ("torch.lu_solve", "deprecated (warns); torch.linalg.lu_solve is tested"),
    ("Tensor.lu_solve", "deprecated (warns); torch.linalg.lu_solve is tested"),
    ("torch.triangular_solve", "deprecated (warns); torch.linalg.solve_triangular is tested"),
    ("Tensor.triangular_solve", "deprecated (warns); torch.linalg.solve_triangular is tested"),
    ("torch.functional.stft", "complex outputs (the loss is over real floating outputs)"),
    ("Tensor.stft", "complex outputs (the loss is over real floating outputs)"),
    ("torch.istft", "needs complex inputs"),
    ("Tensor.istft", "needs complex inputs"),
    ("torch.imag", "needs complex inputs"),
    ("Tensor.int_repr", "operates on quantized tensors"),
    ("torch.int_repr", "operates on quantized tensors"),
    ("Tensor.qscheme", "operates on quantized tensors"),
    ("Tensor.item", "returns a Python number (a constant of the pass)"),
    ("Tensor.resize", "deprecated (warns); use reshape"),
    ("torch.index_reduce", "beta API: warns once per process"),
    ("Tensor.index_reduce", "beta API: warns once per process"),
]
REASON_NO_PATTERN = "needs arguments none of the probe patterns give (no hand-written case)"
REASON_PRIVATE = "private torch function (underscore name)"
REASON_GETTER = "Tensor attribute getter; FX records attribute reads as builtins.getattr"

# FX's Proxy defines these magic methods, so ``x.__add__(y)`` is recorded as ``operator.add``.
_BINARY = (
    "add",
    "sub",
    "mul",
    "floordiv",
    "truediv",
    "div",
    "mod",
    "pow",
    "lshift",
    "rshift",
    "and",
    "or",
    "xor",
    "matmul",
)
DUNDER_AS_OPERATOR = (
    {f"__{n}__" for n in _BINARY}
    | {f"__{n}__" for n in ("getitem", "eq", "ne", "lt", "le", "gt", "ge", "invert", "neg")}
    | {"__pos__", "__abs__"}
    | {f"__r{n}__" for n in _BINARY}
)

# ``x.__iadd__(y)`` written out (not ``x += y``) is recorded as call_method '__iadd__'.
INPLACE_DUNDERS = {
    f"__i{n}__"
    for n in (
        "add",
        "sub",
        "mul",
        "div",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
        "matmul",
    )
} | {"__setitem__"}


def _listed_reason(name: str) -> str | None:
    for pattern, why in FUNCTION_SKIPS:
        if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return why
    return None


def _dunder_reason(short: str) -> str:
    if short in INPLACE_DUNDERS:
        return (
            "in-place dunder: capture rewrites x.__iop__(y) to its out-of-place operator "
            "(x.__setitem__ is refused); tested in test_fixes.py"
        )
    if short in DUNDER_AS_OPERATOR:
        return (
            "Tensor dunder method; FX records x.__op__(y) as the operator function (see the "
            "operator.* rows)"
        )
    return "Tensor dunder method (Python protocol / pickling), not a traced tensor op"


def skip_reason(name: str) -> str | None:
    """Why the function or method ``name`` is not probed (None: probe it). First match wins:
    ``FUNCTION_SKIPS``, attribute getters, private names, dunder methods."""
    why = _listed_reason(name)
    if why is not None:
        return why
    if name.endswith(".__get__"):
        return REASON_GETTER
    short = name.rsplit(".", 1)[-1]
    if short.startswith("_") and not short.startswith("__"):
        return REASON_PRIVATE
    if short.startswith("__"):
        return _dunder_reason(short)
    return None
