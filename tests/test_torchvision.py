"""The torchvision zoo: one model per family, built with weights=None, eval and train mode, float32.
Z-IL gradients must equal autograd's per parameter tensor (relative L1 <= 1e-4; in practice they
are bitwise equal because every vertex's VJP is the op's own backward, summed in autograd's order).
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from helpers import compare_to_bp

import pccompile

TOL = 1e-4
S = pytest.mark.slow

# family -> (builder kwargs, input side); the smallest variant of each family.
FAMILIES = {
    "alexnet": ({}, 64, S),
    "vgg11_bn": ({}, 32, S),
    "resnet18": ({}, 32, None),
    "resnext50_32x4d": ({}, 32, None),
    "wide_resnet50_2": ({}, 32, S),
    "densenet121": ({}, 32, None),
    "squeezenet1_1": ({}, 64, None),
    "googlenet": ({"aux_logits": True, "init_weights": True}, 64, None),
    "inception_v3": ({"aux_logits": True, "init_weights": True}, 299, S),
    "mobilenet_v2": ({}, 32, None),
    "mobilenet_v3_small": ({}, 32, None),
    "mnasnet0_5": ({}, 32, None),
    "shufflenet_v2_x0_5": ({}, 32, None),
    "efficientnet_b0": ({}, 32, None),
    "efficientnet_v2_s": ({}, 32, None),
    "regnet_x_400mf": ({}, 32, None),
    "regnet_y_400mf": ({}, 32, None),
    "convnext_tiny": ({}, 32, None),
    "vit_b_16": ({"image_size": 32}, 32, S),
    "swin_t": ({}, 32, None),
    "maxvit_t": ({}, 224, S),  # its partition sizes fix the input at 224
}


def xent(out, y):
    if isinstance(out, tuple):  # googlenet / inception in train mode: main + auxiliary heads
        return sum(F.cross_entropy(o, y) for o in out if o is not None)
    return F.cross_entropy(out, y)


def _params():
    for name, (kw, side, mark) in FAMILIES.items():
        for train in (False, True):
            marks = [mark] if mark else []
            yield pytest.param(
                name, kw, side, train, marks=marks, id=f"{name}-{'train' if train else 'eval'}"
            )


@pytest.mark.parametrize("name, kwargs, side, train", list(_params()))
def test_torchvision_zil_equals_bp(name, kwargs, side, train):
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, num_classes=10, **kwargs).train(train)
    x, y = torch.randn(2, 3, side, side), torch.tensor([1, 7])
    pcm = pccompile.convert(model, x)
    cmp = compare_to_bp(pcm, (x,), y, xent, "zil")
    assert cmp.report.mode == "efficient" and cmp.report.steps == pcm.plan.depth + 1
    # compare_to_bp already asserts PC and BP give grads to the same parameter set (in eval mode
    # googlenet's auxiliary heads get none from either).
    assert len(cmp.errors) >= 0.9 * sum(1 for _ in model.parameters())
    bad = {n: e for n, e in cmp.errors.items() if not e <= TOL}
    assert not bad, f"{name}: zil differs from bp: {bad}"


def test_default_suite_covers_half_the_families():
    fast = [n for n, (_, _, mark) in FAMILIES.items() if mark is None]
    assert len(fast) * 2 >= len(FAMILIES)
