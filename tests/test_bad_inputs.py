"""Every class of bad input gives a clear error naming the argument, through the Python API and through
the raw custom ops (their C++ checks), never a crash or a silent wrong answer."""
import pytest
import torch

import dlkernels
from conftest import require_native

ops = dlkernels.ops
x2, w2, b2 = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5)
x4, w4, b4 = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)
meta = lambda t: torch.empty_like(t, device="meta")

BAD_CALLS = {
    # linear_act
    "linear wrong dtype": (lambda: ops.linear_act(x2.int(), w2), TypeError, "'x'.*floating point"),
    "linear dtype mismatch": (lambda: ops.linear_act(x2, w2.double()), TypeError, "'weight' of dtype"),
    "linear device mismatch": (lambda: ops.linear_act(x2, meta(w2)), ValueError, "'weight' on"),
    "linear weight rank": (lambda: ops.linear_act(x2, w2[0]), ValueError, "'weight' to be 2-D"),
    "linear shape mismatch": (lambda: ops.linear_act(x2, w2.t()), ValueError, r"x.shape\[-1\]"),
    "linear bias shape": (lambda: ops.linear_act(x2, w2, b2[:3]), ValueError, "'bias' of shape"),
    # The native op gets no Python check: the dispatcher's argument parser names the argument and the type.
    "linear bias type": (lambda: ops.linear_act(x2, w2, [1.0] * 5), (TypeError, RuntimeError),
                         "'bias' to be a torch.Tensor|type 'Optional\\[Tensor\\]' for argument 'bias'"),
    "linear 0-d x": (lambda: ops.linear_act(torch.tensor(1.0), w2), ValueError, "at least 1 dimension"),
    "linear activation": (lambda: ops.linear_act(x2, w2, activation="swish"), ValueError, "unknown activation 'swish'"),
    "linear backend": (lambda: ops.linear_act(x2, w2, backend="cudnn"), ValueError, "unknown backend 'cudnn'"),
    # conv2d
    "conv wrong dtype": (lambda: ops.conv2d(x4.long(), w4), TypeError, "'x'.*floating point"),
    "conv device mismatch": (lambda: ops.conv2d(x4, w4, meta(b4)), ValueError, "'bias' on"),
    "conv x rank": (lambda: ops.conv2d(x4[0, 0], w4), ValueError, "3-D .* or 4-D"),
    "conv weight rank": (lambda: ops.conv2d(x4, w4[0]), ValueError, "'weight' to be 4-D"),
    "conv channels mismatch": (lambda: ops.conv2d(x4[:, :3], w4), ValueError, r"weight.shape\[1\] \* groups"),
    "conv groups": (lambda: ops.conv2d(x4, w4, groups=3), ValueError, "'groups' .* must divide"),
    "conv groups zero": (lambda: ops.conv2d(x4, w4, groups=0), ValueError, "'groups' to be a positive int"),
    "conv zero stride": (lambda: ops.conv2d(x4, w4, stride=0), ValueError, "'stride' to be >= 1"),
    "conv negative padding": (lambda: ops.conv2d(x4, w4, padding=-1), ValueError, "'padding' to be >= 0"),
    "conv zero dilation": (lambda: ops.conv2d(x4, w4, dilation=(1, 0)), ValueError, "'dilation' to be >= 1"),
    "conv bad padding string": (lambda: ops.conv2d(x4, w4, padding="full"), ValueError, "'padding' to be an int"),
    "conv same with stride": (lambda: ops.conv2d(x4, w4, stride=2, padding="same"), ValueError, "strided"),
    "conv input too small": (lambda: ops.conv2d(x4[..., :2, :2], w4), ValueError, "smaller than the dilated kernel"),
    "conv stride type": (lambda: ops.conv2d(x4, w4, stride=(1, 2, 3)), TypeError, "'stride' to be an int or a pair"),
    "conv activation": (lambda: ops.conv2d(x4, w4, activation="swish"), ValueError, "unknown activation"),
    # activation_params
    "params for none": (lambda: ops.linear_act(x2, w2, activation="relu", activation_params={"alpha": 1.0}),
                        ValueError, "'relu' takes no parameters"),
    "params unknown key": (lambda: ops.linear_act(x2, w2, activation="leaky_relu", activation_params={"slope": 0.1}),
                           ValueError, "unknown key.*'slope'.*'activation_params'"),
    "params wrong activation key": (lambda: ops.conv2d(x4, w4, activation="elu", activation_params={"min_val": 0.0}),
                                    ValueError, "'min_val'.*'activation_params'"),
    "params not a dict": (lambda: ops.linear_act(x2, w2, activation="elu", activation_params=1.0), TypeError,
                          "'activation_params' to be a dict"),
    "params not a number": (lambda: ops.linear_act(x2, w2, activation="elu", activation_params={"alpha": "1"}),
                            TypeError, r"activation_params\['alpha'\] to be a number"),
    "params negative slope": (lambda: ops.linear_act(x2, w2, activation="leaky_relu",
                                                     activation_params={"negative_slope": -0.1}),
                              ValueError, r"activation_params\['negative_slope'\] must be >= 0"),
    "params negative elu alpha": (lambda: ops.conv2d(x4, w4, activation="elu", activation_params={"alpha": -1.0}),
                                  ValueError, r"activation_params\['alpha'\] must be >= 0"),
    "params hardtanh order": (lambda: ops.linear_act(x2, w2, activation="hardtanh",
                                                     activation_params={"min_val": 1.0, "max_val": 0.0}),
                              ValueError, "activation_params.*'min_val'.*greater than 'max_val'"),
    # max_pool2d
    "pool wrong dtype": (lambda: ops.max_pool2d(x4.int(), 2), TypeError, "'x'.*floating point"),
    "pool x rank": (lambda: ops.max_pool2d(x4[0, 0], 2), ValueError, "3-D .* or 4-D"),
    "pool zero kernel": (lambda: ops.max_pool2d(x4, 0), ValueError, "'kernel_size' to be >= 1"),
    "pool negative stride": (lambda: ops.max_pool2d(x4, 2, -1), ValueError, "'stride' to be >= 1"),
    "pool padding too large": (lambda: ops.max_pool2d(x4, 3, 1, 2), ValueError, "'padding' .* at most half"),
    "pool input too small": (lambda: ops.max_pool2d(x4[..., :2, :2], 3), ValueError, "too small"),
    "pool empty channels": (lambda: ops.max_pool2d(torch.randn(1, 0, 4, 4), 2), ValueError, "non-zero channel"),
    "pool kernel type": (lambda: ops.max_pool2d(x4, 2.5), TypeError, "'kernel_size' to be an int"),
    "pool backend": (lambda: ops.max_pool2d(x4, 2, backend="fast"), ValueError, "unknown backend"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_python_api_rejects(name):
    call, error, message = BAD_CALLS[name]
    with pytest.raises(error, match=message):
        call()


def test_backend_that_cannot_run_on_the_device_says_so():
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here"):
        ops.linear_act(meta(x2), meta(w2), backend="triton")
    with pytest.raises(RuntimeError, match="backend='native' (has no kernel for device 'meta'|needs the compiled)"):
        ops.linear_act(meta(x2), meta(w2), backend="native")


raw = lambda: torch.ops.dlkernels
RAW_BAD_CALLS = {
    "linear dtype": (lambda: raw().linear_act(x2.int(), w2.int(), None, "none", 0.0, 0.0), "floating point"),
    "linear shape": (lambda: raw().linear_act(x2, w2.t(), None, "none", 0.0, 0.0), "x"),
    "linear bias": (lambda: raw().linear_act(x2, w2, b2[:2], "none", 0.0, 0.0), "bias"),
    "linear activation": (lambda: raw().linear_act(x2, w2, None, "swish", 0.0, 0.0), "unknown activation 'swish'"),
    "linear backward shape": (lambda: raw().linear_act_backward(x2, x2, w2, None, x2, "relu", 0.0, 0.0,
                                                                          [True] * 3), "grad_out"),
    "conv rank": (lambda: raw().conv2d(x4[0], w4, None, [1, 1], [0, 0], [1, 1], 1, "none", 0.0, 0.0), "x"),
    "conv groups": (lambda: raw().conv2d(x4, w4, None, [1, 1], [0, 0], [1, 1], 3, "none", 0.0, 0.0), "groups"),
    "conv stride": (lambda: raw().conv2d(x4, w4, None, [0, 1], [0, 0], [1, 1], 1, "none", 0.0, 0.0), "stride"),
    "conv too small": (lambda: raw().conv2d(x4[..., :2, :2], w4, None, [1, 1], [0, 0], [1, 1], 1, "none", 0.0, 0.0),
                       "kernel"),
    "linear negative slope": (lambda: raw().linear_act(x2, w2, None, "leaky_relu", -0.1, 0.0), "negative_slope"),
    "conv hardtanh order": (lambda: raw().conv2d(x4, w4, None, [1, 1], [0, 0], [1, 1], 1, "hardtanh", 1.0, -1.0),
                            "min_val"),
    "linear backward no out": (lambda: raw().linear_act_backward(x2.new_ones(4, 5), x2, w2, None, None, "elu", 1.0,
                                                                 0.0, [True] * 3), "'out' must be given"),
    "pool kernel": (lambda: raw().max_pool2d(x4, [0, 2], [1, 1], [0, 0], [1, 1], False), "kernel_size"),
    "pool padding": (lambda: raw().max_pool2d(x4, [3, 3], [1, 1], [2, 2], [1, 1], False), "pad"),
    "pool rank": (lambda: raw().max_pool2d(x4[0], [2, 2], [2, 2], [0, 0], [1, 1], False), "x"),
    "pool backward indices": (lambda: raw().max_pool2d_backward(x4, x4, x4, [1, 1], [1, 1], [0, 0], [1, 1], False),
                              "indices"),
}


@pytest.mark.parametrize("name", RAW_BAD_CALLS)
def test_raw_op_rejects(name):
    """The C++ checks raise what the Python API raises (TypeError for a dtype, ValueError for a device, rank,
    shape or value: dlkernels.ops calls the native op without checking first), RuntimeError for the rest."""
    require_native("cpu")
    call, message = RAW_BAD_CALLS[name]
    with pytest.raises((RuntimeError, TypeError, ValueError), match=message):
        call()
