"""The torchvision zoo: one model per family, built with weights=None, eval and train mode, float32.

Each model is trained by BP and by Z-IL side by side through the differential checker (two
optimizer steps of two accumulated micro-batches, clipping, momentum, weight decay,
``set_to_none=False``), and every ``.grad``, parameter, buffer and the RNG state must be
**bitwise** equal: every vertex's VJP is the op's own backward, summed in autograd's order. The
faithful schedule (every value node updated at every step) must be bitwise equal too.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm

from pccompile.testing import Habits, train_against_bp

S = pytest.mark.slow
HABITS = Habits(steps=2, accumulate=2)

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


def _batches(side: int, n: int = 2) -> list:
    g = torch.Generator().manual_seed(1)
    return [((torch.randn(2, 3, side, side, generator=g),), torch.tensor([1, 7])) for _ in range(n)]


@pytest.mark.parametrize("name, kwargs, side, train", list(_params()))
def test_torchvision_zil_equals_bp(name, kwargs, side, train):
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, num_classes=10, **kwargs).train(train)
    rep = train_against_bp(model, _batches(side), xent, "zil", train=train, habits=HABITS)
    assert rep.mode == "efficient"
    assert rep.ok(0.0), f"{name}: " + "\n".join(rep.problems(0.0))


@pytest.mark.parametrize(
    "name, train",
    [("resnet18", True), pytest.param("mobilenet_v3_small", False, marks=S)],
)
def test_torchvision_faithful_zil_is_bitwise(name, train):
    """The synchronous schedule (value nodes moved at every step, energies recorded) gives the
    efficient schedule's updates bit for bit, on a deep float32 network."""
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, num_classes=10).train(train)
    habits = Habits(steps=1, accumulate=1)
    # Behind the error front the gamma=1 dynamics may overflow float32 (a RuntimeWarning says
    # so); each weight is read before that, so the updates must still be BP's bit for bit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rep = train_against_bp(
            model, _batches(32), xent, "zil", train=train, habits=habits, mode="faithful"
        )
    assert rep.mode == "faithful"
    assert rep.ok(0.0), f"{name}: " + "\n".join(rep.problems(0.0))


def test_default_suite_covers_half_the_families():
    fast = [n for n, (_, _, mark) in FAMILIES.items() if mark is None]
    assert len(fast) * 2 >= len(FAMILIES)
