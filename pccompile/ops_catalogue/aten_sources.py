"""The source models of the ATen catalogue: each builds a small float64 model and its example
inputs, without downloading anything. The ATen overloads ``convert(..., capture="export")``
makes vertices of, over these models in eval and train mode, are the catalogue's rows.

Hugging Face transformers models come from tiny random configs (as tests/test_export.py builds
them); torchvision and timm models from their constructors (random init) on 32x32 images; the
idioms are the small blocks of tests/test_export.py that ``torch.fx`` cannot trace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

D = torch.float64
Built = tuple[nn.Module, tuple]


def _ids(*shape: int, vocab: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _image() -> torch.Tensor:
    return _randn(2, 3, 32, 32)


# ------------------------------------------------------------------ Hugging Face transformers
def _bert() -> Built:
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg), (_ids(2, 8),)


def _gpt2() -> Built:
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=50,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg), (_ids(2, 8),)


def _llama() -> Built:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg), (_ids(2, 8),)


def _bart() -> Built:
    import transformers

    cfg = transformers.BartConfig(
        vocab_size=50,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        use_cache=False,
    )
    model = transformers.BartForConditionalGeneration(cfg)
    return model, (_ids(2, 8), None, _ids(2, 6, seed=3))


def _hf_vit() -> Built:
    import transformers

    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(cfg), (_randn(2, 3, 16, 16),)


# ------------------------------------------------------------------ torchvision and timm
def _torchvision(name: str, **kw) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision.models as models

        return getattr(models, name)(num_classes=10, **kw), (_image(),)

    return build


def _timm(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10), (_image(),)

    return build


# ------------------------------------------------------------------ idioms (tests/test_export.py)
class CausalSelfAttention(nn.Module):
    """nn.MultiheadAttention with a causal mask built from the input's length, and dropout."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        n = x.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        h, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False)
        return self.out(h + x)


class ZerosCellLoop(nn.Module):
    """The RNN habit: a state of zeros sized from the batch, then a cell per time step."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(3, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 5, dtype=x.dtype)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.out(h)


class VAE(nn.Module):
    """Reparameterisation with randn_like."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(6, 4), nn.Linear(2, 6)

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.dec(z), mu, logvar


# Name -> builder, in the order the catalogue prefers call sites (first: the smallest models).
SOURCES: dict[str, Callable[[], Built]] = {
    "mha-causal-dropout": lambda: (CausalSelfAttention(), (_randn(2, 5, 8),)),
    "zeros-cell-loop": lambda: (ZerosCellLoop(), (_randn(3, 4, 3),)),
    "vae-randn_like": lambda: (VAE(), (_randn(4, 6),)),
    "bert": _bert,
    "gpt2": _gpt2,
    "llama": _llama,
    "bart": _bart,
    "hf-vit": _hf_vit,
    "resnet18": _torchvision("resnet18"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "vit_b_16": _torchvision("vit_b_16", image_size=32),
    "swin_t": _torchvision("swin_t"),
    "tf_efficientnetv2_b0": _timm("tf_efficientnetv2_b0"),
}


def build_source(name: str) -> Built:
    """The source model ``name`` in float64 (seeded: the same weights every time) and its
    example inputs."""
    torch.manual_seed(0)
    model, inputs = SOURCES[name]()
    return model.to(D), inputs
