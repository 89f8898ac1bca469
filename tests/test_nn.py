"""dlkernels.nn layers and convert()/revert(): equivalence with torch.nn on single layers and real models.

The layers run with backend="auto": the native kernels when the extension is built, else the PyTorch
reference (then the comparisons are exact, and still check the plumbing: parameters, state_dict keys,
fusion, revert).
"""
import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import dlkernels
import dlkernels.nn as dnn
from conftest import TOLERANCE, make_input

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:dlkernels. the compiled extension did not load:RuntimeWarning"),
]

ACTIVATIONS = dlkernels.ACTIVATIONS
# One layer in float32: the same bound as the op tests (conftest's table).
LAYER_TOL = TOLERANCE[(torch.float32, "reduce")]


def assert_close_deep(actual, expected, rtol=1e-3, name=""):
    """float32 results of a deep model (eval mode): our kernels sum in another order than oneDNN/MKL, and the
    ~1e-7 relative rounding differences of each layer grow through 8-50 layers, so the bound is 1e-3 relative
    to the tensor's largest value; a real bug (a wrong activation, a missed bias, a wrong weight) is off by
    O(1) of that scale."""
    expected = expected.detach()
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach(), expected, rtol=rtol, atol=rtol * max(scale, 1e-6),
                               msg=lambda m: f"{name}: {m}")


# Train mode, float32, models without BatchNorm (vgg11, alexnet): our float32 error against the float64 truth
# is held to the rule of the op tests, at most TORCH_ERROR_FACTOR x torch's own float32 error, plus 1e-4 of the
# largest value of that kind (all outputs, all gradients) for tensors torch happens to get almost exact.
#
# Train mode with BatchNorm (resnet18, mobilenet_v2) is ill-conditioned at test sizes: batch statistics of a
# few values (batch 2, a 1x1 last feature map) subtract nearly equal numbers, and a per-channel shift feeding a
# conv + BatchNorm has a gradient that is exactly 0 in exact arithmetic (pure rounding noise in float32). There
# torch's own float32 gradients are off from float64 by up to ~3% of a tensor's largest value, and which of two
# float32 implementations lands closer depends on the input. So those models are compared in float64, where
# the same amplification (up to ~1e7 with a 1x1 last feature map) of ~1e-16 rounding stays below 1e-7 of the
# largest value (DEEP_F64_TOL): still 1e4 times below float32 noise, and 1e7 below a real bug.
TORCH_ERROR_FACTOR = 2.0
DEEP_FLOOR = 1e-4
DEEP_F64_TOL = 1e-7


def assert_within_torch_error(ours, torch32, truth64, scale, name):
    # Differences taken in float32 against the rounded truth (vgg11 has 100M-element gradients): rounding the
    # truth adds at most 6e-8 of the scale, far below the bound.
    truth = truth64.detach().float()
    error = torch.sub(ours.detach(), truth).abs_().max().item()
    torch_error = torch.sub(torch32.detach(), truth).abs_().max().item()
    bound = TORCH_ERROR_FACTOR * torch_error + DEEP_FLOOR * scale
    assert error <= bound, (
        f"{name}: max error {error:.3g} against float64 > {bound:.3g} "
        f"({TORCH_ERROR_FACTOR}x torch's float32 error {torch_error:.3g} + {DEEP_FLOOR} x {scale:.3g})"
    )


def torch_reference(layer, activation):
    act = dnn.activation_module(activation)
    return layer if act is None else nn.Sequential(layer, act)


def forward_backward(module, x):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    grad_out = make_input(*out.shape, seed=99)
    out.backward(grad_out)
    return out, x.grad, {n: p.grad for n, p in module.named_parameters()}


def compare_layers(ours, theirs, x, tol=LAYER_TOL):
    """ours (a dlkernels layer) against theirs (torch.nn, same weights): forward, input and weight grads."""
    out, gx, grads = forward_backward(ours, x)
    out_t, gx_t, grads_t = forward_backward(theirs, x)
    torch.testing.assert_close(out, out_t, **tol)
    torch.testing.assert_close(gx, gx_t, **tol)
    grads_t = {n.removeprefix("0."): g for n, g in grads_t.items()}
    assert grads.keys() == grads_t.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], grads_t[n], **tol, msg=lambda m: f"grad of {n}: {m}")


# ---------------------------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_matches_torch(activation, mode):
    torch.manual_seed(0)
    theirs = nn.Linear(17, 33)
    ours = dnn.Linear(17, 33, activation=activation)
    ours.load_state_dict(theirs.state_dict())
    getattr(ours, mode)(), getattr(theirs, mode)()
    compare_layers(ours, torch_reference(theirs, activation), make_input(2, 3, 17, seed=1))


def test_linear_no_bias_and_1d_input():
    torch.manual_seed(0)
    theirs = nn.Linear(5, 3, bias=False)
    ours = dnn.Linear.from_torch(theirs, activation="tanh")
    assert ours.bias is None and "bias" not in ours.state_dict()
    compare_layers(ours, torch_reference(theirs, "tanh"), make_input(5, seed=2))


CONV_CASES = {
    "plain": dict(),
    "stride2_pad1": dict(stride=2, padding=1),
    "same_dilated": dict(padding="same", dilation=2),
    "valid_groups": dict(padding="valid", groups=3),
    "no_bias": dict(padding=(1, 2), bias=False),
    "reflect": dict(padding=1, padding_mode="reflect"),
    "replicate": dict(padding=(2, 1), padding_mode="replicate", stride=2),
    "circular": dict(padding=1, padding_mode="circular"),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv2d_matches_torch(activation, mode):
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 6, 3, padding=1)
    ours = dnn.Conv2d(3, 6, 3, padding=1, activation=activation)
    ours.load_state_dict(theirs.state_dict())
    getattr(ours, mode)(), getattr(theirs, mode)()
    compare_layers(ours, torch_reference(theirs, activation), make_input(2, 3, 9, 7, seed=3))


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_options_match_torch(case):
    torch.manual_seed(0)
    kwargs = CONV_CASES[case]
    theirs = nn.Conv2d(3, 6, 3, **kwargs)
    ours = dnn.Conv2d(3, 6, 3, **kwargs, activation="relu")
    ours.load_state_dict(theirs.state_dict())
    compare_layers(ours, torch_reference(theirs, "relu"), make_input(2, 3, 10, 9, seed=4))
    # An unbatched (C, H, W) input works like torch's.
    compare_layers(ours, torch_reference(theirs, "relu"), make_input(3, 10, 9, seed=5))


MAXPOOL_CASES = {
    "2x2": dict(kernel_size=2),
    "3s2p1": dict(kernel_size=3, stride=2, padding=1),
    "ceil_dilated": dict(kernel_size=(2, 3), stride=(2, 1), dilation=2, ceil_mode=True),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", list(MAXPOOL_CASES))
def test_max_pool2d_matches_torch(case, mode):
    kwargs = MAXPOOL_CASES[case]
    theirs, ours = nn.MaxPool2d(**kwargs), dnn.MaxPool2d(**kwargs)
    getattr(ours, mode)(), getattr(theirs, mode)()
    x = make_input(2, 3, 9, 11, seed=6)
    exact = dict(rtol=0, atol=0)  # max pooling selects values: bit for bit
    compare_layers(ours, theirs, x, tol=exact)
    out, idx = dnn.MaxPool2d(**kwargs, return_indices=True)(x)
    out_t, idx_t = nn.MaxPool2d(**kwargs, return_indices=True)(x)
    torch.testing.assert_close(out, out_t, **exact)
    assert torch.equal(idx, idx_t)


def test_layers_are_torch_subclasses_with_torch_state_dict_keys():
    pairs = [
        (nn.Linear(4, 3), dnn.Linear(4, 3, activation="gelu")),
        (nn.Conv2d(2, 4, 3, bias=False), dnn.Conv2d(2, 4, 3, bias=False, activation="silu")),
        (nn.MaxPool2d(2), dnn.MaxPool2d(2)),
    ]
    for theirs, ours in pairs:
        assert isinstance(ours, type(theirs))
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_state_dict_round_trip_torch_to_ours_to_torch():
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 5, 3, padding=1)
    ours = dnn.Conv2d(3, 5, 3, padding=1, activation="relu")
    ours.load_state_dict(theirs.state_dict())  # strict: same keys, same shapes
    back = nn.Conv2d(3, 5, 3, padding=1)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    # Through a checkpoint file format as well.
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    back.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(back.weight, theirs.weight)


def test_repr_shows_activation_and_backend():
    text = repr(dnn.Linear(4, 3, activation="gelu_tanh", backend="reference"))
    assert text.startswith("Linear(") and "in_features=4" in text
    assert "activation='gelu_tanh'" in text and "backend='reference'" in text
    text = repr(dnn.Conv2d(3, 8, 3, padding=1, activation="relu"))
    assert "kernel_size=(3, 3)" in text and "activation='relu'" in text and "backend='auto'" in text
    text = repr(dnn.MaxPool2d(2, backend="reference"))
    assert "kernel_size=2" in text and "backend='reference'" in text and "activation" not in text


def test_bad_activation_and_backend_are_clear_errors():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        dnn.Linear(2, 2, activation="swish")
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        dnn.Conv2d(2, 2, 1, backend="cudnn")
    with pytest.raises(TypeError, match="expected a torch.nn.Linear"):
        dnn.Linear.from_torch(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="unknown backend"):
        dnn.convert(nn.Linear(2, 2), backend="fast")


def test_from_torch_shares_parameters_hooks_and_to_torch_goes_back():
    torch.manual_seed(0)
    theirs = nn.Linear(4, 3)
    calls = []
    theirs.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    ours = dnn.Linear.from_torch(theirs, activation="relu", backend="reference")
    assert ours.weight is theirs.weight and ours.bias is theirs.bias
    with torch.no_grad():
        theirs.weight.add_(1.0)  # training one trains the other
    torch.testing.assert_close(ours(torch.ones(1, 4)), F.relu(theirs(torch.ones(1, 4))))
    assert calls == ["Linear", "Linear"]  # the hook came along
    ours.register_parameter("extra", nn.Parameter(torch.zeros(1)))  # containers are not shared
    assert "extra" not in dict(theirs.named_parameters())

    plain = ours.to_torch()
    assert type(plain) is nn.Linear and plain.weight is theirs.weight
    assert not hasattr(plain, "activation") and not hasattr(plain, "backend")
    assert isinstance(ours.activation_module(), nn.ReLU)

    conv = nn.Conv2d(2, 4, 3, padding_mode="reflect", padding=1)
    assert dnn.Conv2d.from_torch(conv, activation="silu").weight is conv.weight
    pool = dnn.MaxPool2d.from_torch(nn.MaxPool2d(3, 2, 1, ceil_mode=True), backend="reference")
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 1, True)


# ---------------------------------------------------------------------------------------------------------
# convert / revert on torchvision models


def _vgg11():
    return torchvision.models.vgg11(weights=None, num_classes=10)


def _alexnet():
    return torchvision.models.alexnet(weights=None, num_classes=10)


def _resnet18():
    return torchvision.models.resnet18(weights=None, num_classes=10)


def _mobilenet_v2():
    return torchvision.models.mobilenet_v2(weights=None, num_classes=10)


# model: (constructor, input size, layers converted, activations fused, max-pools fused into conv blocks,
# has BatchNorm)
MODELS = {
    # 8 conv+relu, 5 of them followed by a pool (Conv2dMaxPool blocks), 3 linear (2 followed by relu)
    "vgg11": (_vgg11, 32, 8 + 3, 8 + 2, 5, False),
    "alexnet": (_alexnet, 64, 5 + 3, 5 + 2, 3, False),
    "resnet18": (_resnet18, 32, 20 + 1 + 1, 0, 0, True),  # conv -> bn -> relu everywhere: nothing to fuse
    "mobilenet_v2": (_mobilenet_v2, 32, 52 + 1, 0, 0, True),  # conv -> bn -> relu6
}


def _all_grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _train_step_grads(model, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both models
    out = model(x)
    out.square().mean().backward()
    return out, _all_grads(model)


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_torchvision_model_matches_torch(name):
    build, size, n_converted, n_fused, n_pooled, has_batchnorm = MODELS[name]
    torch.manual_seed(0)
    original = build()
    x = make_input(2, 3, size, size, seed=7)

    model, report = dlkernels.nn.convert(original, return_report=True)
    assert len(report.converted) == n_converted and len(report.fused) == n_fused and not report.left, str(report)
    assert len(report.pooled) == n_pooled and sum(isinstance(m, dnn.Conv2dMaxPool) for m in model.modules()) == n_pooled
    assert model is not original and not any(isinstance(m, dnn.Linear) for m in original.modules())
    assert list(model.state_dict()) == list(original.state_dict())  # checkpoints load both ways
    assert (
        sum(
            isinstance(m, (nn.Linear, nn.Conv2d, nn.MaxPool2d))
            and not isinstance(m, (dnn.Linear, dnn.Conv2d, dnn.MaxPool2d))
            for m in model.modules()
        )
        == 0
    )

    # eval: forward
    original.eval(), model.eval()
    with torch.no_grad():
        assert_close_deep(model(x), original(x), name="eval output")

    # train: forward, gradients of every parameter, BatchNorm running statistics
    truth = copy.deepcopy(original).double()
    out64, grads64 = _train_step_grads(truth.train(), x.double(), seed=1)
    grad_scale = max(g.abs().max().item() for g in grads64.values())
    if not has_batchnorm:  # float32 against float64, bounded by torch's own float32 error
        out_t, grads_t = _train_step_grads(original.train(), x, seed=1)
        out, grads = _train_step_grads(model.train(), x, seed=1)
        assert_within_torch_error(out, out_t, out64, out64.abs().max().item(), "train output")
        assert grads.keys() == grads_t.keys() and len(grads) == len(list(original.parameters()))
        for key in grads:
            assert_within_torch_error(grads[key], grads_t[key], grads64[key], grad_scale, f"grad of {key}")
    else:  # float64 against float64 (see DEEP_F64_TOL)
        ours64 = dnn.convert(truth)  # a converted copy, in float64
        ours64.load_state_dict(original.state_dict())  # the running statistics before the step
        out, grads = _train_step_grads(ours64.train(), x.double(), seed=1)
        torch.testing.assert_close(out, out64, rtol=1e-6, atol=DEEP_F64_TOL * out64.abs().max().item())
        assert grads.keys() == grads64.keys() and len(grads) == len(list(original.parameters()))
        for key in grads:
            torch.testing.assert_close(grads[key], grads64[key], rtol=1e-6, atol=DEEP_F64_TOL * grad_scale,
                                       msg=lambda m: f"grad of {key}: {m}")
        for (key, buf), buf64 in zip(ours64.named_buffers(), truth.buffers()):
            torch.testing.assert_close(buf, buf64, rtol=1e-6, atol=DEEP_F64_TOL * max(1.0, buf64.abs().max().item()),
                                       msg=lambda m: f"{key}: {m}")
        del ours64
        with torch.no_grad():  # and the float32 forward in train mode, bounded by torch's own error
            out_t, out = original.train()(x), model.train()(x)
        assert_within_torch_error(out, out_t, out64, out64.abs().max().item(), "train output")
    del truth, grads64

    # revert: plain torch.nn modules again, the same weights, the original output. (The train steps left
    # slightly different BatchNorm running statistics in the two models: start revert from the original's.)
    model.load_state_dict(original.state_dict())
    plain = dlkernels.nn.revert(model, inplace=True)
    assert not any(type(m).__module__.startswith("dlkernels") for m in plain.modules())
    assert [type(m) for m in plain.modules()] == [type(m) for m in original.modules()]
    assert list(plain.state_dict()) == list(original.state_dict())
    plain.eval(), original.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), original(x), rtol=0, atol=0)  # the same torch code again


def test_convert_inplace_shares_parameters_and_revert_restores_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))
    weights = [p for p in model.parameters()]
    converted, report = dnn.convert(model, inplace=True, return_report=True)
    assert converted is model and [p for p in model.parameters()] == weights
    assert [(f.name, f.into, f.activation) for f in report.fused] == [("1", "0", "gelu_tanh"), ("3", "2", "sigmoid")]
    assert isinstance(model[1], dnn.FusedActivation) and model[0].activation == "gelu_tanh"
    assert "converted  0: Linear -> dlkernels.nn.Linear + gelu_tanh (fused from 1)" in str(report)
    assert report.to_dict()["fused"][0] == {"name": "1", "into": "0", "activation": "gelu_tanh"}

    dnn.revert(model, inplace=True)
    assert [type(m) for m in model] == [nn.Linear, nn.GELU, nn.Linear, nn.Sigmoid, nn.Linear]
    assert model[1].approximate == "tanh" and [p for p in model.parameters()] == weights


@pytest.mark.parametrize("act, name, params", [
    (nn.ReLU6(), "relu6", None),
    (nn.Hardtanh(-2.0, 0.5), "hardtanh", {"min_val": -2.0, "max_val": 0.5}),
    (nn.Hardswish(), "hardswish", None),
    (nn.Hardsigmoid(), "hardsigmoid", None),
    (nn.LeakyReLU(0.1), "leaky_relu", {"negative_slope": 0.1}),
    (nn.ELU(0.5), "elu", {"alpha": 0.5}),
    (nn.Mish(), "mish", None),
])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_convert_fuses_the_activations_real_models_use(act, name, params, kind):
    """MobileNet (ReLU6, Hardswish, Hardsigmoid), YOLO-style (LeakyReLU), ELU and Mish blocks fuse, with their
    parameters; training gives torch's gradients and revert gives the module back."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 6) if kind == "linear" else nn.Conv2d(3, 6, 3, padding=1)
    model = nn.Sequential(layer, act, nn.Flatten(), nn.LazyLinear(2) if kind == "conv" else nn.Linear(6, 2))
    x = make_input(2, 3, 4, 4, seed=3) if kind == "conv" else make_input(3, 5, seed=3)
    model(x)  # materialise the lazy layer
    fast, report = dnn.convert(model, return_report=True)
    assert [(f.name, f.into, f.activation) for f in report.fused] == [("1", "0", name)]
    assert fast[0].activation == name and fast[0].activation_params == params
    out, gx, grads = forward_backward(fast, x)
    out_t, gx_t, grads_t = forward_backward(model, x)
    torch.testing.assert_close(out, out_t, **LAYER_TOL)
    torch.testing.assert_close(gx, gx_t, **LAYER_TOL)
    assert grads.keys() == grads_t.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], grads_t[n], **LAYER_TOL, msg=lambda m: f"grad of {n}: {m}")
    plain = dnn.revert(fast)
    assert type(plain[1]) is type(act) and repr(plain[1]) == repr(act)


def test_convert_leaves_activation_parameters_the_kernels_do_not_support():
    model = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(-0.1))
    fast, report = dnn.convert(model, return_report=True)
    assert not report.fused and fast[0].activation == "none" and type(fast[1]) is nn.LeakyReLU


def test_convert_leaves_what_it_cannot_run_and_reports_it():
    class MyLinear(nn.Linear):  # a subclass may have its own forward: left alone
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyLinear(3, 3), nn.ReLU(), nn.Linear(3, 3, dtype=torch.complex64), nn.Conv2d(1, 1, 1))
    with pytest.warns(UserWarning, match="left 2 module"):
        converted, report = dnn.convert(model, return_report=True)
    assert [(e.name, e.type) for e in report.left] == [("0", "MyLinear"), ("2", "Linear")]
    assert "subclass of nn.Linear" in report.left[0].reason and "complex64" in report.left[1].reason
    assert type(converted[0]) is MyLinear and type(converted[1]) is nn.ReLU and type(converted[2]) is nn.Linear
    assert isinstance(converted[3], dnn.Conv2d)
    assert "left       0 (MyLinear)" in str(report)

    # fuse=False converts but keeps every activation module.
    converted = dnn.convert(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), fuse=False)
    assert type(converted[1]) is nn.ReLU and converted[0].activation == "none"

    # A backend this install cannot run leaves the layers, with the reason; one it can run converts them.
    for backend in ("native", "triton"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, report = dnn.convert(nn.Sequential(nn.Linear(2, 2)), backend=backend, return_report=True)
        if backend in dlkernels.available_backends()["cpu"]["linear_act"]:
            assert len(report.converted) == 1 and not report.left
        else:
            assert not report.converted and f"backend '{backend}' cannot run it" in report.left[0].reason
            assert any("left 1 module" in str(w.message) for w in caught)


class FxNet(nn.Module):
    """Not an nn.Sequential: activations are separate attributes, some fusable, some not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act_conv = nn.SiLU()                   # fusable: conv -> act_conv
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.gelu = nn.GELU()                       # fusable: fc1 -> gelu
        self.fc2 = nn.Linear(16, 16)
        self.shared = nn.ReLU()                     # used twice: not fusable
        self.fc3 = nn.Linear(16, 16)
        self.fc4 = nn.Linear(16, 16)
        self.tanh = nn.Tanh()                       # fc4's output also used by the skip: not fusable
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.pool(self.act_conv(self.conv(x)))
        x = self.gelu(self.fc1(x.flatten(1)))
        x = self.shared(self.fc2(x))
        x = self.shared(self.fc3(x) + 1)
        y = self.fc4(x)
        x = self.tanh(y) + y
        return self.head(F.relu(x))                 # functional activations are not fused


def test_fx_fusion_on_a_non_sequential_model():
    torch.manual_seed(0)
    original = FxNet()
    model, report = dnn.convert(original, return_report=True)
    assert sorted((f.into, f.name, f.activation) for f in report.fused) == [
        ("conv", "act_conv", "silu"),
        ("fc1", "gelu", "gelu"),
    ]
    assert len(report.converted) == 6 and not report.notes
    assert report.pooled == [dnn.Pooled("pool", "conv")] and isinstance(model.conv, dnn.Conv2dMaxPool)
    assert (
        isinstance(model.act_conv, dnn.FusedActivation)
        and type(model.shared) is nn.ReLU
        and type(model.tanh) is nn.Tanh
    )
    assert list(model.state_dict()) == list(original.state_dict())
    x = make_input(2, 3, 8, 8, seed=8)
    out_t, grads_t = _train_step_grads(original, x, seed=0)
    out, grads = _train_step_grads(model, x, seed=0)
    assert_close_deep(out, out_t)
    for key in grads_t:
        assert_close_deep(grads[key], grads_t[key], name=key)
    assert type(dnn.revert(model).act_conv) is nn.SiLU and type(dnn.revert(model).pool) is nn.MaxPool2d


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.out = nn.Linear(4, 2)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.body(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.act(self.out(x))


def test_untraceable_model_still_fuses_inside_sequentials_and_notes_it():
    model, report = dnn.convert(Untraceable(), return_report=True)
    assert [(f.name, f.into) for f in report.fused] == [("body.1", "body.0")]
    assert len(report.notes) == 1 and "torch.fx could not trace <model>" in report.notes[0]
    assert type(model.act) is nn.ReLU  # not provably after self.out


def test_convert_twice_and_layer_with_unfused_activation_reverts_to_sequential():
    model = dnn.convert(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    again, report = dnn.convert(model, return_report=True)
    assert not report.converted and not report.left and again[0].activation == "relu"
    hand_made = nn.Sequential(dnn.Linear(2, 3, activation="silu"))
    with pytest.warns(UserWarning, match="gain the prefix"):
        plain = dnn.revert(hand_made)
    assert [type(m) for m in plain[0]] == [nn.Linear, nn.SiLU]


# ---------------------------------------------------------------------------------------------------------
# torch.compile, torch.save


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.SiLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_torch_compile_fullgraph_of_converted_model():
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = dnn.convert(SmallCNN())
    x = make_input(2, 3, 8, 8, seed=9)
    expected, expected_grads = _train_step_grads(model, x, seed=0)  # eager first (fires any one-time warning)
    compiled = torch.compile(model, fullgraph=True)  # inductor, forward and backward, no graph break
    model.zero_grad()
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, expected, **LAYER_TOL)
    for key, grad in _all_grads(model).items():
        torch.testing.assert_close(grad, expected_grads[key], **LAYER_TOL)


def test_torch_save_load_of_converted_model(tmp_path):
    torch.manual_seed(0)
    original = SmallCNN()
    model = dnn.convert(original, backend="auto")
    x = make_input(2, 3, 8, 8, seed=10)
    # The whole module (pickled classes: needs weights_only=False, as for any nn.Module).
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert repr(loaded) == repr(model)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # The state_dict: loads into a freshly converted model and into the plain torch model.
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    fresh = dnn.convert(SmallCNN())
    fresh.load_state_dict(state)
    plain = SmallCNN()
    plain.load_state_dict(state)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert_close_deep(model(x), plain(x))
    assert_close_deep(dnn.revert(loaded)(x), original(x))


# ---------------------------------------------------------------------------------------------------------
# The fused Conv2d -> activation -> MaxPool2d block


class TinyVGG(nn.Module):
    """The seed's TinyVGG (examples/tinyvgg.py): (Conv-ReLU-Conv-ReLU-MaxPool) x 2, then a Linear."""

    def __init__(self, hidden=10, size=28):
        super().__init__()

        def block(cin):
            return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))

        self.block_1, self.block_2 = block(1), block(hidden)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(hidden * (size // 4) ** 2, 10))

    def forward(self, x):
        return self.classifier(self.block_2(self.block_1(x)))


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "leaky_relu"])
@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)],
                         ids=["2x2", "3s2p1-ceil"])
def test_conv2d_maxpool_layer_matches_torch(activation, pool):
    torch.manual_seed(0)
    conv, torch_pool = nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(**pool)
    ours = dnn.Conv2dMaxPool.from_torch(copy.deepcopy(conv), torch_pool, activation=activation)
    assert isinstance(ours, nn.Conv2d) and isinstance(ours, dnn.Conv2d)
    assert list(ours.state_dict()) == list(conv.state_dict())
    theirs = nn.Sequential(*[m for m in (conv, dnn.activation_module(activation), torch_pool) if m is not None])
    compare_layers(ours, theirs, make_input(2, 3, 11, 9, seed=3))
    compare_layers(ours, theirs, make_input(3, 11, 9, seed=4))  # unbatched
    # The constructor gives the same layer; to_torch / pool_module give the torch parts back.
    built = dnn.Conv2dMaxPool(3, 6, 3, padding=1, activation=activation, pool_kernel_size=pool["kernel_size"],
                              pool_stride=pool.get("stride"), pool_padding=pool.get("padding", 0),
                              pool_ceil_mode=pool.get("ceil_mode", False))
    built.load_state_dict(conv.state_dict())
    x = make_input(2, 3, 11, 9, seed=5)
    torch.testing.assert_close(built(x), ours(x), rtol=0, atol=0)
    assert type(ours.to_torch()) is nn.Conv2d and repr(ours.pool_module()) == repr(torch_pool)


def test_conv2d_maxpool_layer_rejects_a_pool_it_cannot_compute():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="dilation"):
        dnn.Conv2dMaxPool.from_torch(conv, nn.MaxPool2d(2, dilation=2))
    with pytest.raises(ValueError, match="returns indices"):
        dnn.Conv2dMaxPool.from_torch(conv, nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(ValueError, match="unknown activation"):
        dnn.Conv2dMaxPool(3, 4, 3, activation="swish")


def test_convert_tinyvgg_into_blocks_trains_like_torch_and_reverts():
    """TinyVGG's second conv of each block fuses with its ReLU and MaxPool2d; the checkpoint keys stay, outputs
    and gradients match torch, a torch checkpoint loads both ways, revert gives the three layers back."""
    torch.manual_seed(0)
    original = TinyVGG()
    model, report = dnn.convert(original, return_report=True)
    assert [(p.name, p.into) for p in report.pooled] == [("block_1.4", "block_1.2"), ("block_2.4", "block_2.2")]
    assert "block_1.2: Conv2d -> dlkernels.nn.Conv2dMaxPool + relu (fused from block_1.3) + MaxPool2d (fused from " \
           "block_1.4)" in str(report)
    assert report.to_dict()["pooled"][0] == {"name": "block_1.4", "into": "block_1.2"}
    assert isinstance(model.block_1[2], dnn.Conv2dMaxPool) and isinstance(model.block_1[4], dnn.FusedMaxPool)
    assert list(model.state_dict()) == list(original.state_dict())
    x = make_input(4, 1, 28, 28, seed=11)
    for mode in ("train", "eval"):
        getattr(original, mode)(), getattr(model, mode)()
        out_t, grads_t = _train_step_grads(original, x, seed=0)
        out, grads = _train_step_grads(model, x, seed=0)
        assert_close_deep(out, out_t)
        assert grads.keys() == grads_t.keys()
        for key in grads:
            assert_close_deep(grads[key], grads_t[key], name=key)
    # state_dict round trip: torch -> converted -> torch.
    fresh = dnn.convert(TinyVGG())
    fresh.load_state_dict(original.state_dict())
    plain = TinyVGG()
    plain.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(plain(x), original(x), rtol=0, atol=0)
    reverted = dnn.revert(model)
    assert [type(m) for m in reverted.modules()] == [type(m) for m in original.modules()]
    torch.testing.assert_close(reverted(x), original(x), rtol=0, atol=0)


class FunctionalBlocks(nn.Module):
    """Not a Sequential: conv -> F.relu -> pool module, conv -> pool (no activation), and a conv whose output
    is used twice (not fusable)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)
        self.conv2, self.pool2 = nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.conv3, self.pool3 = nn.Conv2d(4, 4, 1), nn.MaxPool2d(2)
        self.pool4 = nn.MaxPool2d(2, dilation=2)
        self.conv4 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(self.conv2(x))
        y = self.conv3(x)
        x = self.pool3(y) + y[..., ::2, ::2]  # conv3's output has two uses: not fused
        return self.pool4(self.conv4(x))


def test_convert_fuses_blocks_found_by_torch_fx():
    torch.manual_seed(0)
    original = FunctionalBlocks()
    model, report = dnn.convert(original, return_report=True)
    assert sorted((p.into, p.name) for p in report.pooled) == [("conv1", "pool1"), ("conv2", "pool2")]
    assert any("pool4 (MaxPool2d) not fused into conv4: its dilation" in note for note in report.notes)
    assert list(model.state_dict()) == list(original.state_dict())
    x = make_input(2, 3, 20, 20, seed=12)
    out_t, grads_t = _train_step_grads(original, x, seed=0)
    out, grads = _train_step_grads(model, x, seed=0)
    assert_close_deep(out, out_t)
    for key in grads_t:
        assert_close_deep(grads[key], grads_t[key], name=key)
    reverted = dnn.revert(model)
    assert type(reverted.pool1) is nn.MaxPool2d and type(reverted.conv1) is nn.Conv2d
    torch.testing.assert_close(reverted(x), original(x), rtol=0, atol=0)


def test_convert_without_fuse_makes_no_block_and_hand_made_block_reverts_to_three_layers():
    model = dnn.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)), fuse=False)
    assert type(model[0]) is dnn.Conv2d and type(model[2]) is dnn.MaxPool2d
    hand_made = nn.Sequential(dnn.Conv2dMaxPool(3, 4, 3, activation="silu", pool_kernel_size=3, pool_stride=2))
    with pytest.warns(UserWarning, match="gain the prefix"):
        plain = dnn.revert(hand_made)
    assert [type(m) for m in plain[0]] == [nn.Conv2d, nn.SiLU, nn.MaxPool2d]
    x = make_input(2, 3, 12, 12, seed=13)
    torch.testing.assert_close(plain(x), hand_made(x), **LAYER_TOL)


def test_conv2d_maxpool_layer_follows_changes_of_its_pool_attributes():
    block = dnn.Conv2dMaxPool(3, 4, 3, padding=1)
    x = make_input(2, 3, 12, 12, seed=14)
    assert block(x).shape == (2, 4, 6, 6)
    block.pool_kernel_size, block.pool_stride, block.pool_ceil_mode = 5, 3, True
    torch.testing.assert_close(block(x), block.pool_module()(F.relu(block.to_torch()(x))), **LAYER_TOL)
