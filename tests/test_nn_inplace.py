"""In-place ops after converted layers: a converted model trains exactly like the torch model, or raises where
torch raises.

Every converted layer type (Linear, Conv2d, each with a fused activation none / relu / sigmoid / gelu / silu) is
followed by each in-place op real models use; the torch model and the converted one run a forward and a
backward in float64. If torch raises a RuntimeError (its activation saved the output the op overwrites), ours
must raise too; if torch succeeds, ours must succeed with the same loss and gradients.

This holds because each op saves only what its backward reads (dlkernels/contract.py): the output only for the
activations whose derivative is taken from it, as torch's own activations do. When the ops saved the output
for every activation, all 42 combinations of (linear, conv2d) x (none, gelu, silu) x these ops failed.
"""
import pytest
import torch
import torchvision
from torch import nn

import dlkernels.nn as dnn
from conftest import make_input

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:dlkernels. the compiled extension did not load:RuntimeWarning"),
]

LAYERS = ["linear", "conv2d"]
ACTIVATIONS = ["none", "relu", "sigmoid", "gelu", "silu"]


class AddInput(nn.Module):
    """``x += y``: the residual add of ResNet-style blocks, done in place on the layer's output."""

    def forward(self, x, y):
        x += y
        return x


class Mul2(nn.Module):
    """``x.mul_(2)``."""

    def forward(self, x, y):
        return x.mul_(2)


class Unary(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, y):
        return self.module(x)


INPLACE_OPS = {
    "ReLU": lambda: Unary(nn.ReLU(inplace=True)),
    "ReLU6": lambda: Unary(nn.ReLU6(inplace=True)),
    "Hardswish": lambda: Unary(nn.Hardswish(inplace=True)),
    "LeakyReLU": lambda: Unary(nn.LeakyReLU(0.1, inplace=True)),
    "iadd": AddInput,
    "Dropout": lambda: Unary(nn.Dropout(0.5, inplace=True)),  # train mode, a fixed seed
    "mul_": Mul2,
}


class Net(nn.Module):
    """layer -> activation module (fused by convert) -> in-place op -> a loss."""

    def __init__(self, layer, activation, op):
        super().__init__()
        self.layer = nn.Linear(5, 5) if layer == "linear" else nn.Conv2d(3, 3, 3, padding=1)
        act = dnn.activation_module(activation)
        self.act = act if act is not None else nn.Identity()
        self.op = INPLACE_OPS[op]()

    def forward(self, x):
        return self.op(self.act(self.layer(x)), x)


def _step(model, x):
    """(loss, grads) of one forward + backward, or the RuntimeError it raised."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(3)  # the same dropout mask in both models
    try:
        loss = model(x).square().sum()
        loss.backward()
    except RuntimeError as error:
        return error
    return loss.detach(), {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}


def _params():
    return [
        pytest.param(layer, activation, op, id=f"{layer}-{activation}-{op}")
        for layer in LAYERS
        for activation in ACTIVATIONS
        for op in INPLACE_OPS
    ]


@pytest.mark.parametrize("layer, activation, op", _params())
def test_inplace_op_after_converted_layer_trains_like_torch(layer, activation, op):
    torch.manual_seed(0)
    theirs = Net(layer, activation, op).double().train()
    ours, report = dnn.convert(theirs, return_report=True)
    assert len(report.converted) == 1 and report.converted[0].activation == activation  # the activation is fused
    x = make_input(2, 5, dtype=torch.float64, seed=1) if layer == "linear" else \
        make_input(2, 3, 5, 4, dtype=torch.float64, seed=1)

    expected = _step(theirs, x)
    result = _step(ours, x)
    if isinstance(expected, RuntimeError):
        assert isinstance(result, RuntimeError), "torch raises a RuntimeError here; the converted model did not"
        return
    assert not isinstance(result, RuntimeError), f"torch trains; the converted model raised: {result}"
    loss, grads = result
    loss_t, grads_t = expected
    tol = dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(loss, loss_t, **tol)
    assert grads.keys() == grads_t.keys()
    for key in grads_t:
        torch.testing.assert_close(grads[key], grads_t[key], **tol, msg=lambda m: f"grad of {key}: {m}")


def test_mobilenet_v3_small_converted_training_step():
    """Its classifier is Linear -> Hardswish(inplace=True) -> Dropout(inplace=True) -> Linear."""
    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v3_small(weights=None, num_classes=4).double().train()
    ours = dnn.convert(theirs)
    x = make_input(2, 3, 32, 32, dtype=torch.float64, seed=2)
    losses, grads = [], []
    for model in (theirs, ours):
        model.zero_grad()
        torch.manual_seed(5)
        loss = model(x).square().mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    scale = max(g.abs().max().item() for g in grads[0].values())
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-6, atol=1e-7 * scale, msg=lambda m: f"{key}: {m}")
