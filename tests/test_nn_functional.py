"""convert(): functional activations (F.relu(self.conv(x)), x.sigmoid(), ...) fuse like activation modules, and
BatchNorm folding for inference (dlkernels.fold_batchnorm, convert(..., fold_batchnorm=True))."""
import copy
import sys

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import dlkernels
import dlkernels.nn as dnn
from conftest import TOLERANCE, make_input

convert_module = sys.modules["dlkernels.nn.convert"]  # the module (dlkernels.nn.convert is the function)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:dlkernels. the compiled extension did not load:RuntimeWarning"),
]

LAYER_TOL = TOLERANCE[(torch.float32, "reduce")]

# name: (the call, the activation it fuses as)
CALLS = {
    "F.relu": (lambda y: F.relu(y), "relu"),
    "F.relu_inplace": (lambda y: F.relu(y, inplace=True), "relu"),
    "torch.relu": (lambda y: torch.relu(y), "relu"),
    "Tensor.relu": (lambda y: y.relu(), "relu"),
    "Tensor.relu_": (lambda y: y.relu_(), "relu"),
    "torch.sigmoid": (lambda y: torch.sigmoid(y), "sigmoid"),
    "Tensor.sigmoid": (lambda y: y.sigmoid(), "sigmoid"),
    "torch.tanh": (lambda y: torch.tanh(y), "tanh"),
    "Tensor.tanh": (lambda y: y.tanh(), "tanh"),
    "F.silu": (lambda y: F.silu(y), "silu"),
    "F.gelu": (lambda y: F.gelu(y), "gelu"),
    "F.gelu_none": (lambda y: F.gelu(y, approximate="none"), "gelu"),
    "F.gelu_tanh": (lambda y: F.gelu(y, approximate="tanh"), "gelu_tanh"),
    "F.relu6": (lambda y: F.relu6(y), "relu6"),
    "F.hardtanh": (lambda y: F.hardtanh(y, -0.5, 0.25), "hardtanh"),
    "F.hardswish": (lambda y: F.hardswish(y), "hardswish"),
    "F.hardsigmoid": (lambda y: F.hardsigmoid(y), "hardsigmoid"),
    "F.leaky_relu": (lambda y: F.leaky_relu(y, 0.2), "leaky_relu"),
    "F.leaky_relu_default": (lambda y: F.leaky_relu(y), "leaky_relu"),
    "F.elu": (lambda y: F.elu(y, alpha=0.5), "elu"),
    "F.mish": (lambda y: F.mish(y), "mish"),
}


class Head(nn.Module):
    """layer -> call, inside a submodule; a pool between two such blocks."""

    def __init__(self, call, kind):
        super().__init__()
        self.call, self.kind = call, kind
        self.layer = nn.Conv2d(3, 4, 3, padding=1) if kind == "conv" else nn.Linear(5, 4)

    def forward(self, x):
        return self.call(self.layer(x))


class Net(nn.Module):
    def __init__(self, call, kind):
        super().__init__()
        self.head = Head(call, kind)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        y = self.head(x)
        if y.dim() == 4:
            y = y.mean((2, 3))
        return self.out(y)


def _grads(model, x):
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.square().sum().backward()
    return out, x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("call", list(CALLS))
def test_functional_activation_fuses_like_a_module(call, kind):
    torch.manual_seed(0)
    fn, activation = CALLS[call]
    original = Net(fn, kind)
    model, report = dnn.convert(original, return_report=True)
    assert [(f.name.split(":")[0], f.into, f.activation) for f in report.fused] == [("head", "head.layer", activation)]
    assert not report.left and len(report.converted) == 2
    assert isinstance(model.head, torch.fx.GraphModule) and type(model) is Net  # only the calling module
    assert isinstance(model.head.layer, dnn.Linear if kind == "linear" else dnn.Conv2d)
    assert model.head.layer.activation == activation
    assert f"fused from {report.fused[0].name}" in str(report)
    assert list(model.state_dict()) == list(original.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in original.named_parameters()]

    x = make_input(2, 3, 6, 5, seed=1) if kind == "conv" else make_input(3, 5, seed=1)
    out, gx, grads = _grads(model, x)
    out_t, gx_t, grads_t = _grads(original, x)
    torch.testing.assert_close(out, out_t, **LAYER_TOL)
    torch.testing.assert_close(gx, gx_t, **LAYER_TOL)
    for key in grads_t:
        torch.testing.assert_close(grads[key], grads_t[key], **LAYER_TOL, msg=lambda m: f"{key}: {m}")

    # Copies keep everything; revert gives plain torch layers and the call back.
    copied = copy.deepcopy(model)
    assert list(copied.state_dict()) == list(original.state_dict())
    torch.testing.assert_close(copied(x), out, rtol=0, atol=0)
    plain = dnn.revert(model)
    assert not any(type(m).__module__.startswith("dlkernels") for m in plain.modules())
    assert list(plain.state_dict()) == list(original.state_dict())
    torch.testing.assert_close(plain(x), original(x), rtol=0, atol=0)
    assert model.head.layer.activation == activation  # revert worked on a copy


class TwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        z = self.fc2(x)
        # fc's output is used twice; the kernels support no negative slope (their backward reads the output)
        return F.relu(y) + y + F.leaky_relu(z, -0.2)


def test_functional_activation_not_fused_when_the_output_has_other_uses():
    model, report = dnn.convert(TwoUses(), return_report=True)
    assert not report.fused and not report.left and type(model) is TwoUses  # the module tree, not a GraphModule
    x = make_input(3, 4, seed=2)
    torch.testing.assert_close(model(x), TwoUses.forward(model, x))


class ModeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        x = torch.sigmoid(self.conv(x))
        return x * 2 if self.training else x


def test_functional_activation_in_a_mode_dependent_forward_is_left_with_the_reason():
    with pytest.warns(UserWarning, match=r"left 1 module\(s\) as they were: <model>:sigmoid \(torch.sigmoid\)"):
        model, report = dnn.convert(ModeDependent(), return_report=True)
    assert not report.fused and type(model) is ModeDependent
    assert len(report.left) == 1 and "differs between train and eval mode" in report.left[0].reason
    assert report.left[0].type == "torch.sigmoid"


def test_only_activations_the_op_table_has_fuse(monkeypatch):
    """The call table may list activations the kernels do not have yet: they fuse once they join
    dlkernels.ACTIVATIONS (looked up at conversion time)."""
    model = Net(lambda y: F.relu6(y), "linear")
    _, report = dnn.convert(model, return_report=True)
    assert bool(report.fused) == ("relu6" in dlkernels.ACTIVATIONS)
    rows = {name for functions, _, _ in convert_module._ACTIVATION_CALLS for name in functions}
    assert {"relu", "sigmoid", "tanh", "silu", "gelu", "relu6", "hardtanh", "hardswish", "hardsigmoid",
            "leaky_relu", "elu", "mish"} <= rows
    monkeypatch.setattr(
        convert_module.contract, "ACTIVATIONS", tuple(a for a in dlkernels.ACTIVATIONS if a != "sigmoid")
    )
    _, report = dnn.convert(Net(lambda y: y.sigmoid(), "conv"), return_report=True)
    assert not report.fused
    _, report = dnn.convert(Net(lambda y: y.tanh(), "conv"), return_report=True)
    assert len(report.fused) == 1


class Root(nn.Module):
    """The model's own forward makes the call: the model itself becomes a GraphModule; it keeps an unused
    submodule and its plain attributes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)
        self.register_buffer("scale", torch.tensor(2.0))
        self.num_classes = 3

    def forward(self, x):
        return torch.tanh(self.fc(x)) * self.scale


def test_model_itself_becomes_a_graph_module_keeping_everything():
    original = Root()
    model, report = dnn.convert(original, return_report=True)
    assert isinstance(model, torch.fx.GraphModule) and report.fused[0].name == "<model>:tanh"
    assert model.num_classes == 3 and copy.deepcopy(model).num_classes == 3
    assert list(model.state_dict()) == list(original.state_dict()) == list(copy.deepcopy(model).state_dict())
    assert isinstance(model.unused, dnn.Linear)
    x = make_input(2, 3, seed=3)
    torch.testing.assert_close(model(x), original(x), **LAYER_TOL)
    plain = dnn.revert(model)
    torch.testing.assert_close(plain(x), original(x), rtol=0, atol=0)
    model.load_state_dict(original.state_dict())  # checkpoints load both ways
    original.load_state_dict(model.state_dict())


# ---------------------------------------------------------------------------------------------------------
# BatchNorm folding


def _random_stats(model, seed=0):
    """BatchNorms with non-trivial running statistics and affine parameters (fresh ones are identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


class BasicConv2d(nn.Module):
    """torchvision's Inception / GoogLeNet block: conv (no bias) -> bn -> F.relu(inplace=True)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class FoldNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.SiLU())
        self.block = BasicConv2d(6, 5)
        self.bn_affine_free = nn.Sequential(nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4, affine=False))
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        x = self.bn_affine_free(self.block(self.stem(x)))
        return self.mlp(x.mean((2, 3)))


def test_fold_batchnorm_then_fuse_matches_the_eval_model():
    torch.manual_seed(0)
    original = _random_stats(FoldNet()).eval()
    x = make_input(2, 3, 9, 8, seed=4)
    expected = original(x)

    folded, report = dlkernels.fold_batchnorm(original, return_report=True)
    assert [(f.name, f.into) for f in report.folded] == [
        ("stem.1", "stem.0"), ("block.bn", "block.conv"), ("bn_affine_free.1", "bn_affine_free.0"), ("mlp.1", "mlp.0")]
    assert "4 BatchNorms folded" in report.summary()
    assert isinstance(folded.block.bn, dnn.FoldedBatchNorm) and type(folded.block.conv) is nn.Conv2d
    assert folded.block.conv.bias is not None and original.block.conv.bias is None  # a bias was created
    assert "block.bn.running_mean" not in folded.state_dict() and "block.conv.bias" in folded.state_dict()
    torch.testing.assert_close(folded(x), expected, **LAYER_TOL)

    model, report = dnn.convert(original, fold_batchnorm=True, return_report=True)
    assert len(report.folded) == 4 and "folded     block.bn into block.conv" in str(report)
    fused = sorted((f.into, f.activation) for f in report.fused)
    assert fused == [("block.conv", "relu"), ("mlp.0", "relu"), ("stem.0", "silu")]
    assert isinstance(model.stem[2], dnn.FusedActivation) and isinstance(model.block, torch.fx.GraphModule)
    torch.testing.assert_close(model(x), expected, **LAYER_TOL)
    plain = dnn.revert(model)  # folded layers + identity placeholders: the same function, plain torch layers
    assert not any(isinstance(m, (dnn.Linear, dnn.Conv2d)) for m in plain.modules())
    torch.testing.assert_close(plain(x), expected, **LAYER_TOL)
    assert original.block.conv.bias is None and isinstance(original.block.bn, nn.BatchNorm2d)  # a copy was folded


def test_fold_batchnorm_numerics_in_float64():
    """The fold is computed in float64 and cast back: float32 results match the float32 original to float32
    rounding even with large statistics."""
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        original[1].running_mean.fill_(100.0)
        original[1].running_var.uniform_(1e-3, 1e-2)
    folded = dlkernels.fold_batchnorm(original)
    x = make_input(2, 3, 7, 7, seed=5)
    truth = copy.deepcopy(original).double()(x.double())
    torch.testing.assert_close(folded(x).double(), truth, rtol=1e-4, atol=1e-4 * truth.abs().max().item())
    assert folded[0].weight.dtype == torch.float32


def test_fold_batchnorm_refuses_training_mode_and_batch_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"model \(Sequential\) is in training mode.*model.eval\(\)"):
        dlkernels.fold_batchnorm(model)
    with pytest.raises(ValueError, match="training mode"):
        dnn.convert(model, fold_batchnorm=True)
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match=r"^dlkernels.fold_batchnorm: 1 \(BatchNorm2d\) is in training mode"):
        dlkernels.fold_batchnorm(model)
    no_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match=r"1 \(BatchNorm1d\) has track_running_stats=False"):
        dlkernels.fold_batchnorm(no_stats)
    assert isinstance(model[1], nn.BatchNorm2d) and model[1].training  # nothing changed


def test_fold_batchnorm_in_a_traced_model_and_what_it_leaves():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            z = self.conv2(y)
            return self.relu(self.bn2(z) + z)  # conv2's output has two uses: bn2 is not folded

    original = _random_stats(Block()).eval()
    model, report = dnn.convert(original, fold_batchnorm=True, return_report=True)
    assert [(f.name, f.into) for f in report.folded] == [("bn1", "conv1")]
    assert not report.fused  # the relu module is called twice (resnet's pattern): kept as a module
    assert isinstance(model.bn2, nn.BatchNorm2d) and isinstance(model.bn1, dnn.FoldedBatchNorm)
    x = make_input(2, 3, 6, 6, seed=6)
    torch.testing.assert_close(model(x), original(x), **LAYER_TOL)
