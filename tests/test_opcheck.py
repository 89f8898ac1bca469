"""torch.library.opcheck over every registered custom op (one list drives it, so none is forgotten)."""
import pytest
import torch

from dlkernels.ops import CUSTOM_OPS
from conftest import device_params, make_input, require_native


def samples(device):
    """Sample arguments per custom op; forward ops get inputs that require grad (checks autograd)."""
    def t(*shape, grad=False, seed=0, dtype=torch.float64):
        return make_input(*shape, dtype=dtype, device=device, seed=seed).requires_grad_(grad)

    conv = dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2)
    pool = ([3, 2], [2, 1], [1, 1], [1, 1], True)
    x_pool = t(2, 3, 7, 6, seed=5)
    indices = torch.ops.dlkernels.max_pool2d_with_indices(x_pool, *pool)[1]
    conv_args = list(conv.values())
    return {
        "linear_act": [(t(2, 3, 5, grad=True), t(4, 5, grad=True, seed=1), t(4, grad=True, seed=2), "gelu"),
                       (t(3, 5, grad=True), t(4, 5, seed=1), None, "relu")],
        "linear_act_backward": [(t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), t(4, seed=3), t(3, 4, seed=4), "silu",
                                 [True, True, True]),
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), None, t(3, 4, seed=4), "relu",
                                 [True, False, False])],
        "conv2d": [(t(2, 4, 7, 6, grad=True), t(6, 2, 3, 2, grad=True, seed=1), t(6, grad=True, seed=2),
                    *conv_args, "tanh"),
                   (t(1, 4, 7, 6, grad=True).to(memory_format=torch.channels_last), t(6, 2, 3, 2, seed=1), None,
                    *conv_args, "none")],
        "conv2d_backward": [(t(2, 6, 4, 4), t(2, 4, 7, 6, seed=1), t(6, 2, 3, 2, seed=2), t(6, seed=3),
                             t(2, 6, 4, 4, seed=4), *conv_args, "gelu_tanh", [True, True, True])],
        "max_pool2d": [(t(2, 3, 7, 6, grad=True), *pool),
                       (t(1, 3, 8, 8, grad=True).to(memory_format=torch.channels_last), [2, 2], [2, 2], [0, 0],
                        [1, 1], False)],
        "max_pool2d_with_indices": [(t(2, 3, 7, 6, grad=True), *pool)],
        "max_pool2d_backward": [(t(*indices.shape, seed=6), x_pool, indices, *pool)],
    }


def test_every_custom_op_has_samples():
    require_native("cpu")
    assert set(samples("cpu")) == set(CUSTOM_OPS)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("op", CUSTOM_OPS)
def test_opcheck(device, op):
    require_native(device)
    for args in samples(device)[op]:
        torch.library.opcheck(getattr(torch.ops.dlkernels, op).default, args)
