"""The workloads of ``learn_step.py``: the models (each with one fixed random batch), the rules
and one learning step, plain or timed."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import pccompile


# ------------------------------------------------------------------------------------ models
class LSTMClassifier(nn.Module):
    """nn.LSTM (input 32, hidden 128, batch_first) and a Linear head on the last time step."""

    def __init__(self, n_in: int = 32, hidden: int = 128, n_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def mlp() -> nn.Module:
    """784-1024-1024-1024-10 with ReLU."""
    dims = [784, 1024, 1024, 1024]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], 10))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # batch first
    n_classes: int = 10


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("mlp", mlp, (256, 784)),
        ModelSpec(
            "resnet18",
            lambda: torchvision.models.resnet18(weights=None, num_classes=10),
            (32, 3, 32, 32),
        ),
        ModelSpec(
            "vgg11_bn",
            lambda: torchvision.models.vgg11_bn(weights=None, num_classes=10),
            (32, 3, 32, 32),
        ),
        ModelSpec(
            "mobilenet_v2",
            lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
            (32, 3, 32, 32),
        ),
        ModelSpec("lstm", LSTMClassifier, (64, 32, 32)),  # batch 64, sequence 32, features 32
    ]
}


# ------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class RuleSpec:
    label: str  # what the table shows
    rule: str  # pcm.learn(rule=...)
    options: dict[str, Any] = field(default_factory=dict)
    slow: bool = False  # ~depth x or ~steps x bp: --slow-repeats runs, memory measured in them


RULES: dict[str, RuleSpec] = {
    r.label: r
    for r in [
        RuleSpec("bp", "bp"),
        RuleSpec("zil", "zil", {"mode": "efficient"}),
        RuleSpec("zil-faithful", "zil", {"mode": "faithful"}, slow=True),
        RuleSpec("fpa", "fpa"),
        RuleSpec("il", "il", {"steps": 10}, slow=True),
    ]
}


# ------------------------------------------------------------------------------------ steps
@dataclass
class Workload:
    spec: ModelSpec
    pcm: pccompile.PCModule
    x: torch.Tensor
    y: torch.Tensor
    depth: int


def make_workload(spec: ModelSpec, device: torch.device, seed: int = 0) -> Workload:
    torch.manual_seed(seed)
    model = spec.build().to(device).train()
    x = torch.randn(*spec.input_shape, device=device)
    y = torch.randint(0, spec.n_classes, (spec.input_shape[0],), device=device)
    pcm = pccompile.convert(model, x)
    pcm.train()
    return Workload(spec, pcm, x, y, pcm.plan.depth)


def step(w: Workload, r: RuleSpec) -> pccompile.LearnReport:
    w.pcm.zero_grad(set_to_none=True)
    return w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)


@dataclass
class Timing:
    wall_s: float  # time.perf_counter
    cpu_s: float  # time.process_time: CPU time of this process (all its threads)
    mode: str  # the mode the rule ran in (LearnReport.mode)


def timed_step(w: Workload, r: RuleSpec, device: torch.device) -> Timing:
    w.pcm.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    rep = w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Timing(time.perf_counter() - t0, time.process_time() - c0, rep.mode)
