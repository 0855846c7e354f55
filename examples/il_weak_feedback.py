"""IL approaches BP as the output precision falls (Whittington & Bogacz's weak-feedback regime).

An 8-7-6-5-4 tanh MLP, batch 3, loss 1/2 sum (mu - y)^2 weighted by 1/k, IL with T=400 and
gamma=0.1, the update multiplied by k. Prints a table: the relative L1 difference of IL's
gradient from BP's, sum |g_IL - g_BP| / sum |g_BP| over all parameters, for k = 1, 10, 100, 1000,
with one vertex per op and with W&B's one vertex per layer (mu = W tanh(x)). It falls with k.

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
    for k in K:
        pc = grads(IL(gamma=0.1, steps=400, output_precision=1 / k))
        out[k] = ((pc - bp).abs().sum() / bp.abs().sum()).item()
    return out


K = (1, 10, 100, 1000)


def main() -> dict[str, dict[int, float]]:
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
    print("IL (T=400, gamma=0.1) vs BP at output precision 1/k (the update times k):")
    print("relative L1 difference of the gradients, sum|g_IL - g_BP| / sum|g_BP|")
    print(f"{'vertices':18s} " + " ".join(f"{f'k={k}':>8s}" for k in K))
    table = {}
    for name, model, leaves in (("one per op", ops, []), ("W&B layers", wb, [TanhLinear])):
        table[name] = divergences(model, leaves)
        print(f"{name:18s} " + " ".join(f"{table[name][k]:8.4f}" for k in K))
    return table


if __name__ == "__main__":
    main()
