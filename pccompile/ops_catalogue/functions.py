"""Hand-written cases for torch functions and Tensor methods that need particular arguments
(convolutions, norms, losses, indexing, linear algebra), keyed by their docs/ops.md name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .base import Arg, Case, Tensor, case, f, ix, mask, sign, spd


def _both(name: str, *args: Arg, **kw: Any) -> dict[str, Case]:
    """The same call as ``torch.NAME(*ts)`` and as the method ``ts[0].NAME(*ts[1:])``."""
    fn = getattr(torch, name)
    return {
        f"torch.{name}": case(lambda *ts: fn(*ts, **kw), *args, note=f"torch.{name}"),
        f"Tensor.{name}": case(lambda t, *ts: getattr(t, name)(*ts, **kw), *args),
    }


def _unpool(pool: Callable, unpool: Callable) -> Callable:
    def call(x: Tensor) -> Tensor:
        out = pool(x, 2, return_indices=True)  # indexed, not unpacked: FX proxies do not iterate
        return unpool(out[0], out[1], 2)

    return call


def _lu_solve(a: Tensor, b: Tensor) -> Tensor:
    lu = torch.linalg.lu_factor(a)
    return torch.linalg.lu_solve(lu[0], lu[1], b)


N4, N5 = f(2, 3, 6, 6), f(1, 2, 4, 4, 4)  # NCHW and NCDHW inputs
FUNCTION_CASES: dict[str, Case] = {
    # BLAS-like
    **_both("addmm", f(3, 5), f(3, 4), f(4, 5)),
    **_both("addbmm", f(3, 5), f(2, 3, 4), f(2, 4, 5)),
    **_both("baddbmm", f(2, 3, 5), f(2, 3, 4), f(2, 4, 5)),
    **_both("addmv", f(3), f(3, 4), f(4)),
    **_both("addr", f(3, 4), f(3), f(4)),
    "torch.matrix_power": case(lambda a: torch.matrix_power(a, 3), f(4, 4)),
    "Tensor.matrix_power": case(lambda a: a.matrix_power(3), f(4, 4)),
    "torch._C._linalg.linalg_matrix_power": case(
        lambda a: torch.linalg.matrix_power(a, 3), f(4, 4)
    ),
    "torch._C._linalg.linalg_solve": case(torch.linalg.solve, spd(4), f(4, 2)),
    "torch._C._linalg.linalg_solve_ex": case(torch.linalg.solve_ex, spd(4), f(4, 2)),
    "torch._C._linalg.linalg_solve_triangular": case(
        lambda a, b: torch.linalg.solve_triangular(a, b, upper=False), spd(4), f(4, 2)
    ),
    "torch._C._linalg.linalg_lu_solve": case(_lu_solve, spd(4), f(4, 2)),
    "torch.functional.einsum": case(lambda a, b: torch.einsum("ij,jk->ik", a, b), f(3, 4), f(4, 5)),
    "torch._C._linalg.linalg_cross": case(torch.linalg.cross, f(3, 3), f(3, 3)),
    "torch.cross": case(lambda a, b: torch.cross(a, b, dim=1), f(4, 3), f(4, 3)),
    "torch._C._linalg.linalg_multi_dot": case(
        lambda a, b, c: torch.linalg.multi_dot([a, b, c]), f(3, 4), f(4, 5), f(5, 2)
    ),
    "torch._C._linalg.linalg_tensorinv": case(
        lambda a: torch.linalg.tensorinv(a.reshape(4, 2, 2), ind=1), spd(4)
    ),
    "torch._C._linalg.linalg_tensorsolve": case(
        lambda a, b: torch.linalg.tensorsolve(a.reshape(2, 2, 4), b), spd(4), f(2, 2)
    ),
    "torch._C._linalg.linalg_householder_product": case(
        torch.linalg.householder_product, f(4, 3), f(3)
    ),
    **_both("orgqr", f(4, 3), f(3)),
    **_both("ormqr", f(4, 3), f(3), f(4, 2)),
    **_both("cholesky_solve", f(4, 2), spd(4)),
    # indexing and scattering
    "torch.gather": case(lambda a, i: torch.gather(a, 1, i), f(3, 4), ix(3, 2, high=4)),
    "Tensor.gather": case(lambda a, i: a.gather(1, i), f(3, 4), ix(3, 2, high=4)),
    "torch.index_select": case(lambda a, i: torch.index_select(a, 1, i), f(3, 4), ix(2, high=4)),
    "Tensor.index_select": case(lambda a, i: a.index_select(1, i), f(3, 4), ix(2, high=4)),
    "torch.index_add": case(
        lambda a, i, s: torch.index_add(a, 1, i, s), f(3, 4), ix(2, high=4), f(3, 2)
    ),
    "Tensor.index_add": case(lambda a, i, s: a.index_add(1, i, s), f(3, 4), ix(2, high=4), f(3, 2)),
    "torch.index_copy": case(
        lambda a, i, s: torch.index_copy(a, 1, i, s), f(3, 4), ix(2, high=4), f(3, 2)
    ),
    "Tensor.index_copy": case(
        lambda a, i, s: a.index_copy(1, i, s), f(3, 4), ix(2, high=4), f(3, 2)
    ),
    "torch.index_fill": case(lambda a, i: torch.index_fill(a, 1, i, 0.5), f(3, 4), ix(2, high=4)),
    "Tensor.index_fill": case(lambda a, i: a.index_fill(1, i, 0.5), f(3, 4), ix(2, high=4)),
    "torch.index_put": case(
        lambda a, i, v: torch.index_put(a, (i,), v), f(3, 4), ix(2, high=3), f(2, 4)
    ),
    "Tensor.index_put": case(lambda a, i, v: a.index_put((i,), v), f(3, 4), ix(2, high=3), f(2, 4)),
    "torch.masked_fill": case(lambda a, m: torch.masked_fill(a, m, 0.5), f(3, 4), mask(3, 4)),
    "Tensor.masked_fill": case(lambda a, m: a.masked_fill(m, 0.5), f(3, 4), mask(3, 4)),
    "torch.masked_scatter": case(torch.masked_scatter, f(3, 4), mask(3, 4), f(3, 4)),
    "Tensor.masked_scatter": case(
        lambda a, m, s: a.masked_scatter(m, s), f(3, 4), mask(3, 4), f(3, 4)
    ),
    "torch.masked_select": case(torch.masked_select, f(3, 4), mask(3, 4)),
    "Tensor.masked_select": case(lambda a, m: a.masked_select(m), f(3, 4), mask(3, 4)),
    "torch.scatter": case(
        lambda a, i, s: torch.scatter(a, 1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "Tensor.scatter": case(lambda a, i, s: a.scatter(1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)),
    "torch.scatter_add": case(
        lambda a, i, s: torch.scatter_add(a, 1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "Tensor.scatter_add": case(
        lambda a, i, s: a.scatter_add(1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "torch.scatter_reduce": case(
        lambda a, i, s: torch.scatter_reduce(a, 1, i, s, "sum"), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "Tensor.scatter_reduce": case(
        lambda a, i, s: a.scatter_reduce(1, i, s, "sum"), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "torch.take": case(torch.take, f(3, 4), ix(5, high=12)),
    "Tensor.take": case(lambda a, i: a.take(i), f(3, 4), ix(5, high=12)),
    "torch.take_along_dim": case(
        lambda a, i: torch.take_along_dim(a, i, 1), f(3, 4), ix(3, 2, high=4)
    ),
    "Tensor.take_along_dim": case(lambda a, i: a.take_along_dim(i, 1), f(3, 4), ix(3, 2, high=4)),
    "torch.put": case(torch.put, f(3, 4), ix(3, high=12), f(3)),
    "Tensor.put": case(lambda a, i, s: a.put(i, s), f(3, 4), ix(3, high=12), f(3)),
    "torch.select_scatter": case(lambda a, s: torch.select_scatter(a, s, 0, 1), f(3, 4), f(4)),
    "Tensor.select_scatter": case(lambda a, s: a.select_scatter(s, 0, 1), f(3, 4), f(4)),
    "torch.diagonal_scatter": case(torch.diagonal_scatter, f(4, 4), f(4)),
    "Tensor.diagonal_scatter": case(lambda a, s: a.diagonal_scatter(s), f(4, 4), f(4)),
    "torch.as_strided_scatter": case(
        lambda a, s: torch.as_strided_scatter(a, s, (2, 2), (1, 2)), f(3, 4), f(2, 2)
    ),
    "Tensor.as_strided_scatter": case(
        lambda a, s: a.as_strided_scatter(s, (2, 2), (1, 2)), f(3, 4), f(2, 2)
    ),
    "torch.as_strided_copy": case(lambda a: torch.as_strided_copy(a, (2, 2), (1, 2)), f(3, 4)),
    "Tensor.as_strided": case(lambda a: a.as_strided((2, 2), (1, 2)), f(3, 4)),
    "torch.where": case(torch.where, mask(3, 4), f(3, 4), f(3, 4)),
    "Tensor.where": case(lambda a, m, b: a.where(m, b), f(3, 4), mask(3, 4), f(3, 4)),
    # shapes
    "torch.narrow": case(lambda a: torch.narrow(a, 1, 1, 2), f(3, 4)),
    "Tensor.narrow": case(lambda a: a.narrow(1, 1, 2), f(3, 4)),
    "torch.narrow_copy": case(lambda a: torch.narrow_copy(a, 1, 1, 2), f(3, 4)),
    "Tensor.narrow_copy": case(lambda a: a.narrow_copy(1, 1, 2), f(3, 4)),
    "Tensor.expand": case(lambda a: a.expand(2, 3, 4), f(3, 4)),
    "torch.expand_copy": case(lambda a: torch.expand_copy(a, (2, 3, 4)), f(3, 4)),
    "torch.broadcast_to": case(lambda a: torch.broadcast_to(a, (2, 3, 4)), f(3, 4)),
    "Tensor.broadcast_to": case(lambda a: a.broadcast_to((2, 3, 4)), f(3, 4)),
    "torch.unflatten": case(lambda a: torch.unflatten(a, 1, (2, 2)), f(3, 4)),
    "torch.split_with_sizes": case(lambda a: torch.split_with_sizes(a, [1, 3], 1), f(3, 4)),
    "Tensor.split_with_sizes": case(lambda a: a.split_with_sizes([1, 3], 1), f(3, 4)),
    "torch.split_with_sizes_copy": case(
        lambda a: torch.split_with_sizes_copy(a, [1, 3], 1), f(3, 4)
    ),
    "torch.unsafe_split_with_sizes": case(
        lambda a: torch.unsafe_split_with_sizes(a, [1, 3], 1), f(3, 4)
    ),
    "Tensor.unsafe_split_with_sizes": case(lambda a: a.unsafe_split_with_sizes([1, 3], 1), f(3, 4)),
    "torch.dsplit": case(lambda a: torch.dsplit(a, 2), f(2, 3, 4)),
    "Tensor.dsplit": case(lambda a: a.dsplit(2), f(2, 3, 4)),
    "Tensor.unfold": case(lambda a: a.unfold(1, 2, 1), f(3, 4)),
    "torch.unfold_copy": case(lambda a: torch.unfold_copy(a, 1, 2, 1), f(3, 4)),
    "torch.renorm": case(lambda a: torch.renorm(a, 2, 0, 0.5), f(3, 4)),
    "Tensor.renorm": case(lambda a: a.renorm(2, 0, 0.5), f(3, 4)),
    "Tensor.new_full": case(lambda a: a + a.new_full((3, 4), 0.5), f(3, 4)),
    "builtins.getattr": case(lambda a: a.T, f(3, 4), note="x.T"),
    "torch.polygamma": case(lambda a: torch.polygamma(1, a), f(3, 4)),
    "torch._C._special.special_polygamma": case(lambda a: torch.special.polygamma(1, a), f(3, 4)),
    "torch.detach": case(lambda a: a * torch.detach(a), f(3, 4)),
    "Tensor.detach": case(lambda a: a * a.detach(), f(3, 4)),
    # convolutions and linear layers
    "torch.conv1d": case(
        lambda x, w, b: torch.conv1d(x, w, b, padding=1), f(2, 3, 8), f(4, 3, 3), f(4)
    ),
    "torch.conv2d": case(
        lambda x, w, b: torch.conv2d(x, w, b, stride=2, padding=1), N4, f(4, 3, 3, 3), f(4)
    ),
    "torch.conv3d": case(
        lambda x, w, b: torch.conv3d(x, w, b, padding=1), N5, f(3, 2, 3, 3, 3), f(3)
    ),
    "torch.conv_transpose1d": case(
        lambda x, w, b: torch.conv_transpose1d(x, w, b, stride=2), f(2, 3, 5), f(3, 4, 3), f(4)
    ),
    "torch.conv_transpose2d": case(
        lambda x, w, b: torch.conv_transpose2d(x, w, b, stride=2),
        f(2, 3, 4, 4),
        f(3, 4, 3, 3),
        f(4),
    ),
    "torch.conv_transpose3d": case(
        lambda x, w, b: torch.conv_transpose3d(x, w, b), f(1, 2, 3, 3, 3), f(2, 3, 2, 2, 2), f(3)
    ),
    "torch.convolution": case(
        lambda x, w, b: torch.convolution(x, w, b, [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
        N4,
        f(4, 3, 3, 3),
        f(4),
    ),
    "torch.conv_tbc": case(
        lambda x, w, b: torch.conv_tbc(x, w, b, 1), f(5, 2, 3), f(3, 3, 4), f(4)
    ),
    "torch.bilinear": case(torch.bilinear, f(3, 4), f(3, 5), f(6, 4, 5), f(6)),
    "torch._C._nn.linear": case(F.linear, f(3, 4), f(5, 4), f(5)),
    # normalisation
    "torch.batch_norm": case(
        lambda x, w, b: torch.batch_norm(x, w, b, None, None, True, 0.1, 1e-5, False),
        f(4, 3),
        f(3),
        f(3),
    ),
    "torch.nn.functional.batch_norm": case(
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), f(4, 3), f(3), f(3)
    ),
    "torch.native_batch_norm": case(
        lambda x, w, b: torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5),
        f(4, 3),
        f(3),
        f(3),
    ),
    "torch.instance_norm": case(
        lambda x, w, b: torch.instance_norm(x, w, b, None, None, True, 0.1, 1e-5, False),
        f(2, 3, 5),
        f(3),
        f(3),
    ),
    "torch.layer_norm": case(lambda x, w, b: torch.layer_norm(x, [4], w, b), f(3, 4), f(4), f(4)),
    "torch.nn.functional.layer_norm": case(
        lambda x, w, b: F.layer_norm(x, (4,), w, b), f(3, 4), f(4), f(4)
    ),
    "torch.native_layer_norm": case(
        lambda x, w, b: torch.native_layer_norm(x, [4], w, b, 1e-5), f(3, 4), f(4), f(4)
    ),
    "torch.rms_norm": case(lambda x, w: torch.rms_norm(x, [4], w), f(3, 4), f(4)),
    "torch.nn.functional.rms_norm": case(lambda x, w: F.rms_norm(x, (4,), w), f(3, 4), f(4)),
    "torch.nn.functional.group_norm": case(
        lambda x, w, b: F.group_norm(x, 2, w, b), f(2, 4, 3), f(4), f(4)
    ),
    "torch.group_norm": case(lambda x, w, b: torch.group_norm(x, 2, w, b), f(2, 4, 3), f(4), f(4)),
    "torch.native_group_norm": case(
        lambda x, w, b: torch.native_group_norm(x, w, b, 2, 4, 3, 2, 1e-5), f(2, 4, 3), f(4), f(4)
    ),
    "torch.nn.functional.local_response_norm": case(
        lambda x: F.local_response_norm(x, 2), f(2, 4, 3, 3)
    ),
    # embeddings
    "torch.embedding": case(torch.embedding, f(10, 3), ix(2, 4, high=10)),
    "torch.nn.functional.embedding": case(F.embedding, ix(2, 4, high=10), f(10, 3)),
    "torch.nn.functional.embedding_bag": case(
        lambda i, w: F.embedding_bag(i, w, mode="mean"), ix(2, 3, high=10), f(10, 3)
    ),
    # pooling, resampling, padding
    "torch.max_pool2d": case(lambda x: torch.max_pool2d(x, 2), N4),
    "torch.max_pool3d": case(lambda x: torch.max_pool3d(x, 2), N5),
    "torch.nn.functional.max_pool2d": case(lambda x: F.max_pool2d(x, 2), N4),
    "torch.nn.functional.max_pool3d": case(lambda x: F.max_pool3d(x, 2), N5),
    "torch.nn.functional.max_pool2d_with_indices": case(
        lambda x: F.max_pool2d(x, 2, return_indices=True), N4
    ),
    "torch.nn.functional.max_pool3d_with_indices": case(
        lambda x: F.max_pool3d(x, 2, return_indices=True), N5
    ),
    "torch._C._nn.avg_pool2d": case(lambda x: F.avg_pool2d(x, 2), N4),
    "torch._C._nn.avg_pool3d": case(lambda x: F.avg_pool3d(x, 2), N5),
    "torch.nn.functional.adaptive_avg_pool3d": case(lambda x: F.adaptive_avg_pool3d(x, 2), N5),
    "torch.nn.functional.adaptive_max_pool2d": case(lambda x: F.adaptive_max_pool2d(x, 3), N4),
    "torch.nn.functional.adaptive_max_pool3d": case(lambda x: F.adaptive_max_pool3d(x, 2), N5),
    "torch.nn.functional.adaptive_max_pool2d_with_indices": case(
        lambda x: F.adaptive_max_pool2d(x, 3, return_indices=True), N4
    ),
    "torch.nn.functional.adaptive_max_pool3d_with_indices": case(
        lambda x: F.adaptive_max_pool3d(x, 2, return_indices=True), N5
    ),
    "torch.nn.functional.lp_pool2d": case(lambda x: F.lp_pool2d(x, 2.0, 2), N4),
    "torch.nn.functional.lp_pool3d": case(lambda x: F.lp_pool3d(x, 2.0, 2), N5),
    "torch.nn.functional.fractional_max_pool2d": case(
        lambda x: F.fractional_max_pool2d(x, 2, output_size=3), f(1, 2, 6, 6)
    ),
    "torch.nn.functional.fractional_max_pool2d_with_indices": case(
        lambda x: F.fractional_max_pool2d(x, 2, output_size=3, return_indices=True), f(1, 2, 6, 6)
    ),
    "torch.nn.functional.fractional_max_pool3d": case(
        lambda x: F.fractional_max_pool3d(x, 2, output_size=2), f(1, 2, 5, 5, 5)
    ),
    "torch.nn.functional.fractional_max_pool3d_with_indices": case(
        lambda x: F.fractional_max_pool3d(x, 2, output_size=2, return_indices=True),
        f(1, 2, 5, 5, 5),
    ),
    "torch.nn.functional.max_unpool1d": case(_unpool(F.max_pool1d, F.max_unpool1d), f(2, 3, 6)),
    "torch.nn.functional.max_unpool2d": case(_unpool(F.max_pool2d, F.max_unpool2d), N4),
    "torch.nn.functional.max_unpool3d": case(_unpool(F.max_pool3d, F.max_unpool3d), N5),
    "torch.nn.functional.interpolate": case(
        lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), N4
    ),
    "torch.nn.functional.grid_sample": case(
        lambda x, g: F.grid_sample(x, g, align_corners=False),
        f(1, 2, 4, 4),
        f(1, 3, 3, 2, lo=-0.8, hi=0.8),
    ),
    "torch.grid_sampler": case(
        lambda x, g: torch.grid_sampler(x, g, 0, 0, False),
        f(1, 2, 4, 4),
        f(1, 3, 3, 2, lo=-0.8, hi=0.8),
    ),
    "torch.grid_sampler_2d": case(
        lambda x, g: torch.grid_sampler_2d(x, g, 0, 0, False),
        f(1, 2, 4, 4),
        f(1, 3, 3, 2, lo=-0.8, hi=0.8),
    ),
    "torch.grid_sampler_3d": case(
        lambda x, g: torch.grid_sampler_3d(x, g, 0, 0, False),
        f(1, 2, 3, 3, 3),
        f(1, 2, 2, 2, 3, lo=-0.8, hi=0.8),
    ),
    "torch.nn.functional.affine_grid": case(
        lambda t: F.affine_grid(t, [1, 2, 4, 4], align_corners=False), f(1, 2, 3)
    ),
    "torch.affine_grid_generator": case(
        lambda t: torch.affine_grid_generator(t, [1, 2, 4, 4], False), f(1, 2, 3)
    ),
    "torch.nn.functional.unfold": case(lambda x: F.unfold(x, 2), f(1, 2, 4, 4)),
    "torch.nn.functional.fold": case(lambda x: F.fold(x, (4, 4), 2), f(1, 8, 9)),
    "torch.pixel_shuffle": case(lambda x: torch.pixel_shuffle(x, 2), f(1, 4, 2, 2)),
    "torch.pixel_unshuffle": case(lambda x: torch.pixel_unshuffle(x, 2), f(1, 1, 4, 4)),
    "torch.channel_shuffle": case(lambda x: torch.channel_shuffle(x, 2), f(1, 4, 2, 2)),
    "torch.native_channel_shuffle": case(
        lambda x: torch.native_channel_shuffle(x, 2), f(1, 4, 2, 2)
    ),
    "torch.nn.functional.dropout2d": case(lambda x: F.dropout2d(x, 0.5), f(2, 3, 4, 4)),
    "torch.nn.functional.dropout3d": case(lambda x: F.dropout3d(x, 0.5), f(2, 3, 2, 2, 2)),
    # attention and recurrent cells
    "torch.nn.functional.multi_head_attention_forward": case(
        lambda q, wi, bi, wo, bo: F.multi_head_attention_forward(
            q, q, q, 4, 2, wi, bi, None, None, False, 0.0, wo, bo, need_weights=False
        )[0],
        f(3, 2, 4),
        f(12, 4),
        f(12),
        f(4, 4),
        f(4),
    ),
    "torch.lstm_cell": case(
        lambda x, h, c, wi, wh, bi, bh: torch.lstm_cell(x, (h, c), wi, wh, bi, bh),
        f(3, 4),
        f(3, 5),
        f(3, 5),
        f(20, 4),
        f(20, 5),
        f(20),
        f(20),
    ),
    "torch.gru_cell": case(torch.gru_cell, f(3, 4), f(3, 5), f(15, 4), f(15, 5), f(15), f(15)),
    "torch.rnn_tanh_cell": case(
        torch.rnn_tanh_cell, f(3, 4), f(3, 5), f(5, 4), f(5, 5), f(5), f(5)
    ),
    "torch.rnn_relu_cell": case(
        torch.rnn_relu_cell, f(3, 4), f(3, 5), f(5, 4), f(5, 5), f(5), f(5)
    ),
    "torch.lstm": case(
        lambda x, h, c, wi, wh, bi, bh: torch.lstm(
            x, (h, c), (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(1, 3, 5),
        f(20, 4),
        f(20, 5),
        f(20),
        f(20),
    ),
    "torch.gru": case(
        lambda x, h, wi, wh, bi, bh: torch.gru(
            x, h, (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(15, 4),
        f(15, 5),
        f(15),
        f(15),
    ),
    "torch.rnn_tanh": case(
        lambda x, h, wi, wh, bi, bh: torch.rnn_tanh(
            x, h, (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(5, 4),
        f(5, 5),
        f(5),
        f(5),
    ),
    "torch.rnn_relu": case(
        lambda x, h, wi, wh, bi, bh: torch.rnn_relu(
            x, h, (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(5, 4),
        f(5, 5),
        f(5),
        f(5),
    ),
    # losses used inside a model
    "torch.nn.functional.nll_loss": case(F.nll_loss, f(3, 4), ix(3, high=4)),
    "torch.nn.functional.kl_div": case(
        lambda a, b: F.kl_div(a, b, reduction="batchmean"), f(3, 4), f(3, 4)
    ),
    "torch.nn.functional.multi_margin_loss": case(F.multi_margin_loss, f(3, 4), ix(3, high=4)),
    "torch.nn.functional.multilabel_margin_loss": case(
        F.multilabel_margin_loss, f(3, 4), ix(3, 4, high=4)
    ),
    "torch.nn.functional.soft_margin_loss": case(F.soft_margin_loss, f(3, 4), sign(3, 4)),
    "torch.nn.functional.cosine_embedding_loss": case(
        F.cosine_embedding_loss, f(3, 4), f(3, 4), sign(3)
    ),
    "torch.cosine_embedding_loss": case(torch.cosine_embedding_loss, f(3, 4), f(3, 4), sign(3)),
    "torch.poisson_nll_loss": case(
        lambda a, b: torch.poisson_nll_loss(a, b, True, False, 1e-8, 1), f(3, 4), f(3, 4)
    ),
    "torch.nn.functional.ctc_loss": case(
        lambda lp, t: F.ctc_loss(lp.log_softmax(2), t + 1, (5, 5), (3, 3)),
        f(5, 2, 4),
        ix(2, 3, high=3),
    ),
    "torch.ctc_loss": case(
        lambda lp, t: torch.ctc_loss(lp.log_softmax(2), t + 1, (5, 5), (3, 3)),
        f(5, 2, 4),
        ix(2, 3, high=3),
    ),
    "torch.nn.functional.linear_cross_entropy": case(
        F.linear_cross_entropy, f(3, 4), f(5, 4), ix(3, high=5)
    ),
}
