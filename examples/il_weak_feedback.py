"""IL approaches BP as the output precision falls (Whittington & Bogacz's weak-feedback regime).

An 8-7-6-5-4 tanh MLP, batch 3, loss 1/2 sum (mu - y)^2 weighted by 1/k, IL with T=400 and
gamma=0.1, the update multiplied by k. Prints the relative L1 divergence from BP for
k = 1, 10, 100, 1000, with one vertex per op and with W&B's one vertex per layer (mu = W tanh(x)).

    .venv/bin/python examples/il_weak_feedback.py
"""

import torch
import torch.nn as nn

import pccompile
from pccompile import IL


class TanhLinear(nn.Module):
    """mu = W tanh(x): the nonlinearity on the presynaptic value."""

    def __init__(self, n_in: int, n_out: int, first: bool = False):
        super().__init__()
        self.l, self.first = nn.Linear(n_in, n_out), first

    def forward(self, x):
        return self.l(x if self.first else torch.tanh(x))


def divergences(model: nn.Module, leaves: list) -> dict[int, float]:
    torch.manual_seed(1)
    x, y = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    pcm = pccompile.convert(model.double(), x, leaf_modules=leaves)

    def grads(rule) -> torch.Tensor:
        for p in pcm.parameters():
            p.grad = None
        pcm.learn(x, target=y, loss_fn=lambda o, t: 0.5 * ((o - t) ** 2).sum(), rule=rule)
        return torch.cat([p.grad.flatten() for p in pcm.parameters()])

    bp = grads("bp")
    out = {}
    for k in (1, 10, 100, 1000):
        pc = grads(IL(gamma=0.1, steps=400, output_precision=1 / k))
        out[k] = ((pc - bp).abs().sum() / bp.abs().sum()).item()
    return out


def main() -> None:
    torch.manual_seed(0)
    ops = nn.Sequential(
        nn.Linear(8, 7),
        nn.Tanh(),
        nn.Linear(7, 6),
        nn.Tanh(),
        nn.Linear(6, 5),
        nn.Tanh(),
        nn.Linear(5, 4),
    )
    torch.manual_seed(0)
    wb = nn.Sequential(TanhLinear(8, 7, True), TanhLinear(7, 6), TanhLinear(6, 5), TanhLinear(5, 4))
    for name, model, leaves in (("one vertex per op", ops, []), ("W&B layers", wb, [TanhLinear])):
        row = "  ".join(f"k={k}: {d:.4f}" for k, d in divergences(model, leaves).items())
        print(f"{name:18s} {row}")


if __name__ == "__main__":
    main()
