"""Models from timm that broke converted training (issue 18: an in-place op right after a converted layer):
vgg11 and mobilenetv3_small_050 must train converted exactly like the originals, in float64."""
import pytest
import timm
import torch

import dlkernels.nn as dnn
from conftest import make_input

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # timm's own nn.Linear subclass (the classifier) is left as it is, by design: convert says so.
    pytest.mark.filterwarnings("ignore:dlkernels.convert left:UserWarning"),
]


def training_step(model, x):
    model.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("name, size", [("vgg11", 32), ("mobilenetv3_small_050", 64)])
def test_timm_model_trains_converted_like_the_original(name, size):
    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False, num_classes=4).double().train()
    converted, report = dnn.convert(original, return_report=True)
    assert report.converted and report.fused, str(report)
    x = make_input(2, 3, size, size, dtype=torch.float64, seed=1)
    for _ in range(2):  # twice: BatchNorm statistics move between steps in both models alike
        loss, grads = training_step(converted, x)
        loss_t, grads_t = training_step(original, x)
        torch.testing.assert_close(loss, loss_t, rtol=1e-9, atol=1e-12)
        assert grads.keys() == grads_t.keys()
        # A gradient that is zero in exact arithmetic (a BatchNorm bias whose output's gradient sums to zero)
        # comes out as float64 rounding noise, whose value depends on the summation order: its tolerance is
        # relative to the model's gradients, not to its own size.
        floor = 1e-6 * max(g.abs().max().item() for g in grads_t.values())
        for key, grad in grads_t.items():
            scale = max(grad.abs().max().item(), floor)
            torch.testing.assert_close(grads[key], grad, rtol=1e-6, atol=1e-9 * scale, msg=lambda m: f"{key}: {m}")
