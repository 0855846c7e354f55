"""The declared op tables: which torch names are stochastic, stateful, constants of the pass,
written in Python over ATen (and so pure), or never part of a PC graph.

Read by :mod:`pccompile.ops.registry`, which declares every other torch function and Tensor
method from torch's own ATen schemas. A name missing from every table and from ATen has no rule:
a model that uses it gets UnsupportedOpError.
"""

from __future__ import annotations

import builtins
import operator


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# torch.nn layers. Containers are traced through (never leaves); every other class in torch.nn
# is pure unless listed here.
STOCHASTIC_MODULES = _names(
    """
    Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout RReLU
    FractionalMaxPool2d FractionalMaxPool3d MultiheadAttention Transformer TransformerEncoder
    TransformerDecoder TransformerEncoderLayer TransformerDecoderLayer RNN LSTM GRU
    """
)
STATEFUL_MODULES = _names(
    """
    BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm LazyBatchNorm1d LazyBatchNorm2d
    LazyBatchNorm3d InstanceNorm1d InstanceNorm2d InstanceNorm3d LazyInstanceNorm1d
    LazyInstanceNorm2d LazyInstanceNorm3d
    """
)
CONTAINERS = _names(
    """
    Module Sequential ModuleList ModuleDict ParameterList ParameterDict Container
    """
)

# torch functions and Tensor methods: the universe is torch's own overridable API (its public
# operators); each is pure unless it is random, mutates running statistics, is in-place, or is
# listed as unsupported below.
STOCHASTIC_NAMES = _names(
    """
    dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout feature_dropout
    native_dropout rrelu bernoulli multinomial normal poisson rand_like randn_like randint_like
    gumbel_softmax uniform multi_head_attention_forward scaled_dot_product_attention
    fractional_max_pool2d fractional_max_pool3d fractional_max_pool2d_with_indices
    fractional_max_pool3d_with_indices
    """
)
# ATen schemas that update running statistics without declaring it (no ``Tensor(a!)``), and the
# Python-level functions over them.
STATEFUL_NAMES = _names(
    """
    batch_norm instance_norm native_batch_norm batch_norm_update_stats batch_norm_impl_index
    cudnn_batch_norm miopen_batch_norm native_batch_norm_legit
    native_batch_norm_legit_functional
    """
)
# Results that depend on their tensor arguments' shape, dtype or device only (or are detached):
# BP passes no gradient through them, so they are constants of the pass (computed once, in the
# feed-forward pass, which also draws a random mask once per batch), never vertices.
NO_GRADIENT_NAMES = _names(
    """
    new_empty new_zeros new_ones new_full new_tensor empty_like zeros_like ones_like full_like
    rand_like randn_like randint_like detach
    """
)
# Factories: results made from sizes, dtypes and constants only. With NO_GRADIENT_NAMES they
# root the constants of the pass that functionalize may leave mutated in place (a mask built with
# new_zeros and filled through slices runs once, in order, in the feed-forward pass).
CONSTANT_FACTORIES = (NO_GRADIENT_NAMES - {"detach"}) | _names(  # detach shares storage
    """
    zeros ones full empty arange eye tensor scalar_tensor as_tensor linspace logspace tril_indices
    triu_indices zeros_like ones_like full_like empty_like new_empty_strided empty_strided
    """
)
UNSUPPORTED_METHODS = {
    "backward": "calls backward inside forward",
    "register_hook": "registers an autograd hook inside forward",
    "retain_grad": "touches autograd state inside forward",
    "requires_grad_": "changes requires_grad inside forward",
    "data_ptr": "depends on memory addresses",
    "set_": "replaces a tensor's storage",
    "resize_": "resizes a tensor in place",
    "resize_as_": "resizes a tensor in place",
    "copy_": "copies into an existing tensor in place",
    "numpy": "leaves torch",
}

# torch's Python-level API without an ATen operator of the same name: each declared here.
PYTHON_LEVEL_PURE = _names(
    # Tensor dunders and dtype conversions
    """
    __add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rdiv__ __div__ __floordiv__
    __rfloordiv__ __mod__ __rmod__ __rpow__ __matmul__ __rmatmul__ __eq__ __ne__ __lt__ __le__
    __gt__ __ge__ __invert__ __rand__ __ror__ __rxor__ __rlshift__ __rrshift__ __len__
    __reversed__ __bool__ __nonzero__ __int__ __long__ __float__ __complex__ __index__
    __format__ __repr__ bfloat16 bool byte cdouble cfloat char double float half int long short
    type dim_order ndimension nelement is_shared _is_view tolist unique lu
    """
    # torch / torch.functional
    """
    unravel_index dsmm hsmm saddmm spmm sym_float sym_int sym_ite sym_max sym_min sym_not
    sym_sum sym_sqrt
    """
    # torch.nn.functional written in Python over ATen ops
    """
    adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices
    adaptive_max_pool3d_with_indices affine_grid cross_entropy fold gaussian_nll_loss
    grid_sample interpolate linear_cross_entropy local_response_norm lp_pool1d lp_pool2d
    lp_pool3d max_unpool1d multilabel_soft_margin_loss normalize softmin softsign tanhshrink
    triplet_margin_with_distance_loss
    """
)
# Random initial guesses inside: stochastic.
PYTHON_LEVEL_STOCHASTIC = _names("lobpcg pca_lowrank svd_lowrank")

# In-place operator spellings and their out-of-place twins.
OPERATOR_INPLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}
OPERATOR_PURE = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.matmul,
    operator.neg,
    operator.pos,
    operator.abs,
    operator.getitem,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.and_,
    operator.or_,
    operator.xor,
    operator.invert,
    operator.lshift,
    operator.rshift,
    builtins.getattr,
    builtins.len,
]

# ``x.__iadd__(y)`` written out arrives as a call_method: the same in-place ops as ``x += y``.
INPLACE_DUNDERS = {
    f"__i{op}__": getattr(operator, op)
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "matmul",
        "xor",
        "lshift",
        "rshift",
    )
} | {"__idiv__": operator.truediv, "__iand__": operator.and_, "__ior__": operator.or_}


def is_inplace_name(name: str) -> bool:
    return (
        (name.endswith("_") and not name.endswith("__"))
        or name in INPLACE_DUNDERS
        or (name == "__setitem__")
    )
