"""Every torchvision classification model, converted: forward, float64 backward, revert and state_dict against
the original.

Each model is built with ``weights=None`` and 10 classes (scripts/model_coverage.py's ``build``, the one place
that knows each constructor's arguments) and run on a 2x3x64x64 input (224x224 for maxvit_t, 299x299 for inception_v3):

- forward in eval mode, float32, against the original with the same weights; and the same for
  ``convert(model.eval(), fold_batchnorm=True)``;
- a forward + backward in float64, train mode with a fixed seed (the same dropout masks), against the
  original's output, input gradient and parameter gradients (BatchNorm over a tiny batch is fine in float64);
- ``revert`` gives plain torch modules computing the original's output; ``state_dict`` loads both ways.

By default a representative fast subset runs (``DEFAULT_MODELS``); ``DLKERNELS_ALL_MODELS=1`` runs every model
(heavy ones are marked ``slow``; ``TOO_LARGE`` ones are skipped with the measured reason):

    DLKERNELS_ALL_MODELS=1 python -m pytest -q tests/test_nn_models.py
"""
import importlib.util
import io
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import dlkernels.nn as dnn
from conftest import make_input

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:dlkernels. the compiled extension did not load:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:dlkernels.convert left:UserWarning"),
]


def _load_coverage():
    path = Path(__file__).resolve().parents[1] / "scripts" / "model_coverage.py"
    spec = importlib.util.spec_from_file_location("model_coverage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


coverage = _load_coverage()
ALL_MODELS = coverage.MODELS
# The default run: ~35 s here. vgg11 (129M parameters with its 25088x4096 classifier: ~50 s here) is covered by
# tests/test_nn.py and runs with DLKERNELS_ALL_MODELS=1.
DEFAULT_MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0",
                  "shufflenet_v2_x0_5", "regnet_y_400mf", "convnext_tiny", "densenet121", "googlenet"]
ENV = "DLKERNELS_ALL_MODELS"

# Skipped even with DLKERNELS_ALL_MODELS=1: over 150M parameters (196M-637M). vgg11's 129M already take ~50 s
# and ~4 GB here (float32 and float64 copies of original and converted model, gradients); these would take
# minutes and up to ~20 GB each on a 2-core machine.
TOO_LARGE = {name: "over 150M parameters: minutes and many GB in float64 on a 2-core machine"
             for name in ("vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "convnext_large")}
# Under ~10 s each here (measured on 2 shared cores); the others are marked slow.
FAST = set(DEFAULT_MODELS) | {"squeezenet1_1", "mnasnet0_5", "mnasnet0_75", "mobilenet_v3_large", "swin_t",
                              "shufflenet_v2_x1_0", "regnet_x_400mf", "regnet_x_800mf", "regnet_y_800mf"}



def selected_models(environ=os.environ):
    """The models this run covers: DEFAULT_MODELS, or all of them with DLKERNELS_ALL_MODELS=1."""
    return list(ALL_MODELS) if environ.get(ENV) == "1" else list(DEFAULT_MODELS)


def _params():
    params = []
    for name in selected_models():
        marks = []
        if name in TOO_LARGE:
            marks.append(pytest.mark.skip(reason=TOO_LARGE[name]))
        elif name not in FAST:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def test_the_environment_variable_selects_every_model():
    assert selected_models({}) == DEFAULT_MODELS and set(DEFAULT_MODELS) <= set(ALL_MODELS)
    assert selected_models({ENV: "1"}) == ALL_MODELS and len(ALL_MODELS) >= 80
    assert set(TOO_LARGE) | FAST <= set(ALL_MODELS)


def assert_close_deep(actual, expected, name, rtol=1e-3):
    """float32 through many layers (see tests/test_nn.py): 1e-3 of the tensor's largest value."""
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=rtol, atol=rtol * max(scale, 1e-6),
                               msg=lambda m: f"{name}: {m}")


def _build(name):
    torch.manual_seed(0)
    model = coverage.build(name)
    with torch.no_grad():  # BatchNorms with non-trivial statistics, so that folding them is tested
        g = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    size = coverage.input_size(name)
    return model, make_input(2, 3, size, size, seed=7)


@pytest.mark.parametrize("name", _params())
def test_converted_model_forward_revert_and_state_dict(name):
    original, x = _build(name)
    model, report = dnn.convert(original, return_report=True)
    assert report.converted
    assert list(model.state_dict()) == list(original.state_dict())

    original.eval(), model.eval()
    with torch.no_grad():
        expected = original(x)
        assert_close_deep(model(x), expected, "eval output")
        folded, fold_report = dnn.convert(original, fold_batchnorm=True, return_report=True)
        assert len(fold_report.folded) == sum(isinstance(m, dnn.FoldedBatchNorm) for m in folded.modules())
        assert_close_deep(folded(x), expected, "eval output, BatchNorm folded")
        del folded

        plain = dnn.revert(model)
        assert not any(type(m).__module__.startswith("dlkernels") for m in plain.modules())
        assert list(plain.state_dict()) == list(original.state_dict())
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)  # the same torch code again
        del plain

    # state_dict round trip, through a file format: converted -> torch -> converted.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = _build(name)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict: the same keys and shapes
    again = dnn.convert(fresh)
    again.load_state_dict(fresh.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", _params())
def test_converted_model_float64_backward(name):
    original, x = _build(name)
    theirs = original.double().train()
    ours = dnn.convert(theirs)
    x = x.double()
    results = []
    for model in (theirs, ours):
        model.zero_grad()
        xg = x.clone().requires_grad_()
        torch.manual_seed(5)  # the same dropout masks / stochastic depth in both
        out = model(xg)
        out = out.logits if hasattr(out, "logits") else out  # googlenet / inception in train mode
        out.square().mean().backward()
        results.append((out.detach(), xg.grad, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out, gx, grads), (out_t, gx_t, grads_t) = results[1], results[0]
    tol = 1e-7  # float64 rounding amplified by BatchNorm over a tiny batch stays far below this (tests/test_nn.py)
    torch.testing.assert_close(out, out_t, rtol=1e-6, atol=tol * out_t.abs().max().item())
    torch.testing.assert_close(gx, gx_t, rtol=1e-6, atol=tol * gx_t.abs().max().item())
    assert grads.keys() == grads_t.keys() and grads
    scale = max(g.abs().max().item() for g in grads_t.values())
    for key in grads_t:
        torch.testing.assert_close(grads[key], grads_t[key], rtol=1e-6, atol=tol * scale,
                                   msg=lambda m: f"grad of {key}: {m}")
