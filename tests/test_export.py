"""The torch.export front end: models symbolic tracing cannot follow, trained exactly like BP.

Every model here fails ``torch.fx`` symbolic tracing (checked: ``capture="fx"`` raises) and is
converted by ``capture="auto"`` through ``torch.export``; no leaf modules. Each is trained by
the differential checker against plain autograd in eval and train mode (dropout on: the masks
are replayed from the feed-forward RNG state), float64, with Z-IL in both schedules and FPA.
Hugging Face transformers models are built from small random configs (no download).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile import ConfigError, TraceError
from pccompile.ops_catalogue.aten_sources import (
    VAE,
    CausalSelfAttention,
    ZerosCellLoop,
    build_source,
)
from pccompile.testing import Habits, train_against_bp

D = torch.float64
TOL = 1e-9  # what the issue asks; most rows are bitwise (asserted where they are)
HABITS = Habits(steps=2, accumulate=2)
RULES = [("zil", "efficient"), ("zil", "faithful"), ("fpa", "efficient")]
transformers = pytest.importorskip("transformers")


def _ids(*shape: int, vocab: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _check(model, batches, loss, *, bitwise: bool, rules=RULES) -> None:
    for train in (False, True):
        for rule, mode in rules:
            with warnings.catch_warnings():
                # faithful: masked attention scores (-inf) make the energy of vertices behind the
                # error front non-finite (a RuntimeWarning says so); their weights were read
                # before, which the comparison below checks
                warnings.simplefilter("ignore", RuntimeWarning)
                opts = dict(train=train, habits=HABITS, mode=mode)
                rep = train_against_bp(model, batches, loss, rule, **opts)
            tol = 0.0 if bitwise else TOL
            where = f"{rule}/{mode}/{'train' if train else 'eval'}"
            assert rep.ok(tol), where + ": " + "\n".join(rep.problems(tol))


def _aten_vertices(pcm) -> Counter:
    return Counter(str(v.node.target).split(".")[1] for v in pcm.plan.vertices if v.kind == "op")


def _fx_refuses(model, x) -> None:
    with pytest.raises(TraceError, match="with torch.fx"):
        pccompile.convert(model, x, capture="fx")


# ------------------------------------------------------------------------ transformers
def _logits_xent(out, y):
    return F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1))


def _tiny_bert():
    return build_source("bert")[0]  # the ATen catalogue's tiny BERT: seeded, float64


def test_bert_sequence_classification_equals_bp_bitwise():
    model = _tiny_bert()
    x = _ids(2, 8)
    _fx_refuses(model, x)
    pcm = pccompile.convert(model, x)
    ops = _aten_vertices(pcm)
    # 2 layers x (q, k, v, attention output, intermediate, output) + pooler + classifier
    assert ops["linear"] == 14 and ops["layer_norm"] == 5
    # the word embedding reads the input ids: a vertex; the position and token-type embeddings
    # read buffers only: parameter transforms, part of the vertex that adds them
    assert ops["embedding"] == 1
    assert ops["scaled_dot_product_attention"] == 2 and ops["gelu"] == 2
    names = [v.name for v in pcm.plan.vertices]
    assert "bert.encoder.layer.0.attention.self.query.linear" in names  # named after modules
    batches = [((_ids(2, 8, seed=s),), torch.tensor([0, 2])) for s in (2, 3)]
    _check(model, batches, lambda o, y: F.cross_entropy(o.logits, y), bitwise=True)


def test_gpt2_causal_lm_equals_bp_bitwise():
    model = build_source("gpt2")[0]
    with pytest.raises(TraceError, match=r"takes \*args or \*\*kwargs"):  # its own cause
        pccompile.convert(model, _ids(2, 8), capture="fx")
    pcm = pccompile.convert(model, _ids(2, 8))
    assert _aten_vertices(pcm)["scaled_dot_product_attention"] == 2
    # the tied embedding/readout weight gets both uses' contributions (checked by the checker)
    batches = [((_ids(2, 8, seed=s),), _ids(2, 8, seed=s + 10)) for s in (2, 3)]
    _check(model, batches, _logits_xent, bitwise=True)


@pytest.mark.slow
def test_llama_causal_lm_equals_bp():
    model = build_source("llama")[0]
    batches = [((_ids(2, 8, seed=s),), _ids(2, 8, seed=s + 10)) for s in (2, 3)]
    _check(model, batches, _logits_xent, bitwise=False)


@pytest.mark.slow
def test_bart_seq2seq_equals_bp_bitwise():
    model = build_source("bart")[0]

    def batch(s):
        return (_ids(2, 8, seed=s), None, _ids(2, 6, seed=s + 1)), _ids(2, 6, seed=s + 2)

    _check(model, [batch(2), batch(5)], _logits_xent, bitwise=True)


@pytest.mark.slow
def test_hf_vit_equals_bp_bitwise():
    model = build_source("hf-vit")[0]
    g = torch.Generator().manual_seed(1)
    batches = [((torch.randn(2, 3, 16, 16, generator=g, dtype=D),), torch.tensor([0, 2]))] * 2
    _check(model, batches, lambda o, y: F.cross_entropy(o.logits, y), bitwise=True)


def test_a_transformers_model_built_as_usual_converts_without_its_cache():
    """use_cache=True (the default): the generation Cache no loss reads is left out of the graph;
    the model stays as built and Z-IL still gives autograd's gradients bitwise."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=50, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg).eval()  # dropout off: one forward to compare
    assert model.config.use_cache is True
    x, y = _ids(2, 8), _ids(2, 8, seed=7)
    with torch.no_grad():
        eager = model(x)
    assert "cache" in eager or "past_key_values" in eager  # what made torch.export refuse
    pcm = pccompile.convert(model, x)
    assert model.config.use_cache is True  # left as built
    out = pcm.eval()(x)
    assert list(out.keys()) == ["logits"] and torch.equal(out.logits, eager.logits)
    model.zero_grad()
    pcm.learn(x, target=y, loss_fn=_logits_xent)
    pc = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _logits_xent(model(x), y).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(pc, model.parameters()))


# ---------------------------------------------------------------------- everyday idioms
# CausalSelfAttention (MultiheadAttention, a causal torch.ones mask, dropout), ZerosCellLoop
# (torch.zeros(x.shape[0], H) before a GRUCell loop) and VAE (randn_like) live with the ATen
# catalogue's source models, which collect their ops: pccompile/ops_catalogue/aten_sources.py.
def _vae_loss(out, x):
    recon, mu, logvar = out
    return F.mse_loss(recon, x) - 0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def _randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize(
    "build, x, target, loss",
    [
        (CausalSelfAttention, _randn(2, 5, 8), torch.tensor([1, 2]), None),
        (ZerosCellLoop, _randn(3, 4, 3), _randn(3, 2, seed=2), F.mse_loss),
        (VAE, _randn(4, 6), _randn(4, 6, seed=3), _vae_loss),
    ],
    ids=["mha-causal-dropout", "zeros-cell-loop", "vae-randn_like"],
)
def test_everyday_idioms_fx_cannot_trace_equal_bp(build, x, target, loss):
    torch.manual_seed(0)
    model = build().to(D)
    if loss is None:
        loss = lambda o, y: F.cross_entropy(o.mean(1), y)  # noqa: E731
    if build is not VAE:  # the VAE traces with fx too (randn_like is a constant of the pass)
        _fx_refuses(model, x)
    _check(model, [((x,), target)], loss, bitwise=True)


def test_vae_noise_is_replayed_not_redrawn():
    """A broken setting fails the same check: without RNG replay the noise of a re-evaluation
    differs, so faithful Z-IL would drift from BP."""
    torch.manual_seed(0)
    model = VAE().to(D)
    x = _randn(4, 6)
    pcm = pccompile.convert(model, x, capture="export")
    (noise,) = [v for v in pcm.plan.vertices if "randn" in str(v.node.target)] or [None]
    assert noise is None  # randn_like has no gradient: a constant of the pass, drawn once
    rep = train_against_bp(model, [((x,), x)], _vae_loss, "zil", mode="faithful", train=True)
    assert rep.ok(0.0), rep.problems(0.0)


# ------------------------------------------------------------------ front-end choice
class ShapeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.shape[0] > 2:  # control flow on a size: fx cannot, export can
            return torch.tanh(self.lin(x))
        return self.lin(x)


def test_auto_falls_back_to_export_and_fx_is_still_selectable():
    x = torch.randn(3, 4)
    with pytest.raises(TraceError, match="control flow"):
        pccompile.convert(ShapeBranch(), x, capture="fx")
    pcm = pccompile.convert(ShapeBranch(), x)
    assert any("tanh" in str(v.node.target) for v in pcm.plan.vertices)
    assert torch.equal(pcm(x), ShapeBranch.forward(pcm.original, x))


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # on values: neither front end can make a static graph of this
            return self.lin(x)
        return -self.lin(x)


def test_when_both_front_ends_fail_the_error_lists_each_with_its_remedy():
    with pytest.raises(TraceError) as err:
        pccompile.convert(ValueBranch(), torch.randn(3, 4))
    msg = str(err.value)
    assert msg.startswith("Neither front end can convert ValueBranch.")
    assert "1. torch.fx:" in msg and "2. torch.export:" in msg
    assert "torch.where" in msg  # the export attempt's remedy for value-dependent control flow


def test_export_refuses_fx_only_options():
    with pytest.raises(ConfigError, match="capture='fx'"):
        pccompile.convert(nn.Linear(2, 2), torch.randn(1, 2), capture="export", leaf_modules=["x"])
    with pytest.raises(ConfigError, match="capture must be"):
        pccompile.convert(nn.Linear(2, 2), torch.randn(1, 2), capture="jit")


class KwargsForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, **kwargs):
        return self.lin(x)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_forward_with_kwargs_converts_with_either_front_end(capture):
    x = torch.randn(3, 4, dtype=D)
    pcm = pccompile.convert(KwargsForward().to(D), x, capture=capture)
    assert torch.equal(pcm(x), pcm.original(x))
    rep = train_against_bp(
        KwargsForward().to(D),
        [((x,), _randn(3, 2))],
        F.mse_loss,
        "zil",
        convert_options={"capture": capture},
    )
    assert rep.ok(0.0), rep.problems(0.0)


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    hidden: torch.Tensor


class ReturnsDataclass(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return Out(self.b(h), h)


def test_dataclass_outputs_reach_the_loss_as_dataclasses():
    x = torch.randn(3, 4, dtype=D)
    loss = lambda o, y: F.mse_loss(o.logits, y) + o.hidden.pow(2).mean()  # noqa: E731
    pcm = pccompile.convert(ReturnsDataclass().to(D), x)
    assert isinstance(pcm(x), Out)
    _check(ReturnsDataclass().to(D), [((x,), _randn(3, 2))], loss, bitwise=True)


class ListInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, xs):
        return self.a(xs[0]) * self.b(xs[1])


def test_a_list_of_tensors_as_input():
    xs = [torch.randn(3, 4, dtype=D), torch.randn(3, 2, dtype=D)]
    _check(ListInput().to(D), [((xs,), _randn(3, 3))], F.mse_loss, bitwise=True)


def test_every_in_place_aten_overload_gets_a_twin_of_the_same_signature():
    from pccompile.ops.aten import _argument_types, aten_inplace_twin

    checked = 0
    for name in dir(torch.ops.aten):
        if not name.endswith("_") or name.endswith("__"):
            continue
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            op = getattr(packet, overload)
            twin = aten_inplace_twin(op)
            if twin is not None:
                assert _argument_types(twin) == _argument_types(op), (op, twin)
                checked += 1
    assert checked > 200
    assert str(aten_inplace_twin(torch.ops.aten.bernoulli_.float)) == "aten.bernoulli.p"


class DropPath(nn.Module):
    """timm/torchvision stochastic depth: a mask drawn in place with bernoulli_."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        keep = x.new_empty(x.shape[0], 1).bernoulli_(0.8)
        return self.lin(x) * keep / 0.8 + x.pow(2.0)


def test_drop_path_in_train_mode_under_export_equals_bp():
    torch.manual_seed(0)
    x = _randn(6, 4)
    rep = train_against_bp(
        DropPath().to(D),
        [((x,), _randn(6, 4, seed=2))],
        F.mse_loss,
        "zil",
        train=True,
        convert_options={"capture": "export"},
        mode="faithful",
    )
    assert rep.ok(0.0), rep.problems(0.0)


class MaskBySlices(nn.Module):
    """Swin's shifted-window mask habit: a constant filled through slices, in place."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        mask = x.new_zeros(x.shape[0], 4)
        mask[:2, :2] = 1.0
        mask[2:, 2:] = -1.0
        return torch.tanh(self.lin(x)) + mask


@pytest.mark.parametrize("capture", ["auto", "export"])
def test_a_constant_mask_written_through_slices_runs_in_place(capture):
    """torch.fx cannot trace item assignment at all; export records it, and the writes into a
    constant of the pass run in place, in order, as in the module."""
    x = _randn(3, 4)
    pcm = pccompile.convert(MaskBySlices().to(D), x, capture=capture)
    assert torch.equal(pcm(x), pcm.original(x))
    rep = train_against_bp(
        MaskBySlices().to(D),
        [((x,), _randn(3, 4, seed=2))],
        F.mse_loss,
        "zil",
        mode="faithful",
        convert_options={"capture": capture},
    )
    assert rep.ok(0.0), rep.problems(0.0)


def test_writing_a_value_node_into_a_constant_is_still_refused():
    class Leak(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            mask = x.new_zeros(3, 4)
            mask[:2] = self.lin(x)[:2]  # data written into the constant: not a constant anymore
            return mask

    with pytest.raises(pccompile.UnsupportedOpError, match="copies into an existing tensor"):
        pccompile.convert(Leak(), torch.randn(3, 4), capture="export")


def test_the_batch_stays_free_other_sizes_are_fixed_with_a_clear_error():
    """torch.export keeps dimension 0 dynamic where the model allows: a batch of another size
    trains like BP without converting again; another sequence length is an InputError."""
    model = _tiny_bert()
    pcm = pccompile.convert(model.eval(), _ids(2, 8))
    loss = lambda o, y: F.cross_entropy(o.logits, y)  # noqa: E731
    rep = train_against_bp(
        model,
        [((_ids(3, 8, seed=4),), torch.tensor([0, 1, 2]))],
        loss,
        "zil",
        train=False,
        example_inputs=(_ids(2, 8),),
    )
    assert rep.ok(0.0), rep.problems(0.0)
    with pytest.raises(pccompile.InputError, match="sizes the model was converted with"):
        pcm.learn(_ids(2, 10), target=torch.tensor([0, 1]), loss_fn=loss)


def test_bert_in_float32_is_bitwise_too():
    torch.manual_seed(0)
    model = _tiny_bert().float()
    batches = [((_ids(2, 8, seed=s),), torch.tensor([0, 2])) for s in (2, 3)]
    for train in (False, True):
        rep = train_against_bp(
            model, batches, lambda o, y: F.cross_entropy(o.logits, y), "zil", train=train
        )
        assert rep.bitwise, rep.problems(0.0)


def test_a_module_torch_export_already_produced_converts():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(D)
    exported = torch.export.export(net, (_randn(3, 4),)).module()
    rep = train_against_bp(exported, [((_randn(3, 4),), _randn(3, 2, seed=2))], F.mse_loss, "zil")
    assert rep.ok(0.0), rep.problems(0.0)
