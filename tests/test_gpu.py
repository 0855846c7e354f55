"""CUDA path: the same exactness on a GPU. Skipped on machines without CUDA (CI has none)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from helpers import compare_to_bp

import pccompile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("rule", ["zil", "fpa"])
def test_resnet18_on_cuda_equals_bp(rule):
    torch.manual_seed(0)
    model = tvm.resnet18(weights=None, num_classes=10).cuda().train()
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    pcm = pccompile.convert(model, x)
    torch.backends.cudnn.deterministic = True
    cmp = compare_to_bp(pcm, (x,), y, F.cross_entropy, rule)
    assert max(cmp.errors.values()) <= 1e-4
    assert all(p.grad.is_cuda for p in pcm.parameters())


def test_converted_on_cpu_then_moved():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    pcm = pccompile.convert(model, torch.randn(3, 4)).cuda()
    x, y = torch.randn(3, 4, device="cuda"), torch.randn(3, 2, device="cuda")
    report = pcm.learn(x, target=y, loss_fn=F.mse_loss)
    assert report.output.is_cuda and model[0].weight.grad.is_cuda
