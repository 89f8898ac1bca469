"""torch.library.opcheck over every registered custom op of every backend's namespace (one list drives it,
so none is forgotten), and the schemas each namespace registered against the contract's."""
import pytest
import torch

from dlkernels.contract import CUSTOM_OPS, SCHEMAS
from conftest import NAMESPACES, device_params, make_input, namespace_device, namespace_params, require_namespace


def samples(namespace, device):
    """Sample arguments per custom op; forward ops get inputs that require grad (checks autograd)."""
    # float64 wherever it runs; the Triton kernels on a GPU take float32 (fp64 tl.dot is checked elsewhere).
    dtype = torch.float32 if namespace == "dlkernels_triton" and device == "cuda" else torch.float64

    def t(*shape, grad=False, seed=0):
        return make_input(*shape, dtype=dtype, device=device, seed=seed).requires_grad_(grad)

    conv = dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2)
    pool = ([3, 2], [2, 1], [1, 1], [1, 1], True)
    x_pool = t(2, 3, 7, 6, seed=5)
    indices = getattr(torch.ops, namespace).max_pool2d_with_indices(x_pool, *pool)[1]
    conv_args = list(conv.values())
    p0 = (0.0, 0.0)  # (alpha, beta) of the activations without parameters
    # conv2d_maxpool: conv (stride 1, padding 1) then 3x3/2 pooling with padding and ceil_mode, and 2x2/2.
    block = ([1, 1], [1, 1], [1, 1], 2)
    pool3, pool2 = ([3, 3], [2, 2], [1, 1], True), ([2, 2], [2, 2], [0, 0], False)
    x_block, w_block, b_block = t(2, 4, 7, 6, seed=7), t(6, 2, 3, 3, seed=8), t(6, seed=9)
    block_ops = getattr(torch.ops, namespace)
    out_block, index_block = block_ops.conv2d_maxpool(x_block, w_block, b_block, *block, "relu", *p0, *pool3)
    out_gelu, index_gelu = block_ops.conv2d_maxpool(x_block, w_block, None, *block, "gelu", *p0, *pool2)
    return {
        "linear_act": [(t(2, 3, 5, grad=True), t(4, 5, grad=True, seed=1), t(4, grad=True, seed=2), "gelu", *p0),
                       (t(3, 5, grad=True), t(4, 5, seed=1), None, "relu", *p0),
                       (t(3, 5, grad=True), t(4, 5, grad=True, seed=1), t(4, seed=2), "leaky_relu", 0.2, 0.0),
                       (t(3, 5, grad=True), t(4, 5, grad=True, seed=1), None, "mish", *p0)],
        "linear_act_backward": [(t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), t(4, seed=3), t(3, 4, seed=4), "silu", *p0,
                                 [True, True, True]),
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), None, t(3, 4, seed=4), "relu", *p0,
                                 [True, False, False]),
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), None, t(3, 4, seed=4), "tanh", *p0,
                                 [True, False, False]),
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), t(4, seed=3), t(3, 4, seed=4), "hardtanh",
                                 -0.5, 0.5, [True, True, True]),
                                # out is None where the backward does not read it
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), t(4, seed=3), None, "gelu", *p0,
                                 [True, True, True]),
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), t(4, seed=3), None, "hardswish", *p0,
                                 [True, False, True]),
                                (t(3, 4), t(3, 5, seed=1), t(4, 5, seed=2), t(4, seed=3), None, "none", *p0,
                                 [False, True, True])],
        "conv2d": [(t(2, 4, 7, 6, grad=True), t(6, 2, 3, 2, grad=True, seed=1), t(6, grad=True, seed=2),
                    *conv_args, "tanh", *p0),
                   (t(1, 4, 7, 6, grad=True).to(memory_format=torch.channels_last), t(6, 2, 3, 2, seed=1), None,
                    *conv_args, "none", *p0),
                   (t(1, 4, 7, 6, grad=True), t(6, 2, 3, 2, grad=True, seed=1), t(6, seed=2), *conv_args, "elu",
                    0.5, 0.0)],
        "conv2d_backward": [(t(2, 6, 4, 4), t(2, 4, 7, 6, seed=1), t(6, 2, 3, 2, seed=2), t(6, seed=3),
                             t(2, 6, 4, 4, seed=4), *conv_args, "gelu_tanh", *p0, [True, True, True]),
                            (t(2, 6, 4, 4), t(2, 4, 7, 6, seed=1), t(6, 2, 3, 2, seed=2), t(6, seed=3),
                             t(2, 6, 4, 4, seed=4), *conv_args, "relu", *p0, [False, False, True]),
                            (t(2, 6, 4, 4), t(2, 4, 7, 6, seed=1), t(6, 2, 3, 2, seed=2), t(6, seed=3),
                             t(2, 6, 4, 4, seed=4), *conv_args, "relu6", 0.0, 6.0, [True, True, True]),
                            (t(2, 6, 4, 4), t(2, 4, 7, 6, seed=1), t(6, 2, 3, 2, seed=2), None, None, *conv_args,
                             "none", *p0, [True, True, False])],
        "max_pool2d": [(t(2, 3, 7, 6, grad=True), *pool),
                       (t(1, 3, 8, 8, grad=True).to(memory_format=torch.channels_last), [2, 2], [2, 2], [0, 0],
                        [1, 1], False)],
        "max_pool2d_with_indices": [(t(2, 3, 7, 6, grad=True), *pool)],
        "max_pool2d_backward": [(t(*indices.shape, seed=6), x_pool, indices, *pool)],
        "conv2d_maxpool": [(t(2, 4, 7, 6, grad=True), t(6, 2, 3, 3, grad=True, seed=1), t(6, grad=True, seed=2),
                            *block, "relu", *p0, *pool3),
                           (t(1, 4, 8, 8, grad=True).to(memory_format=torch.channels_last),
                            t(6, 2, 3, 3, grad=True, seed=1), None, *block, "gelu", *p0, *pool2),
                           (t(2, 4, 7, 6, grad=True), t(6, 2, 3, 3, seed=1), t(6, grad=True, seed=2), *block,
                            "leaky_relu", 0.2, 0.0, *pool2)],
        "conv2d_maxpool_backward": [(t(*out_block.shape, seed=10), x_block, w_block, b_block, out_block, index_block,
                                     *block, "relu", *p0, *pool3, [True, True, True]),
                                    (t(*out_gelu.shape, seed=10), x_block, w_block, None, None, index_gelu, *block,
                                     "gelu", *p0, *pool2, [True, True, False]),
                                    (t(*out_block.shape, seed=10), x_block, w_block, b_block, None, index_block,
                                     *block, "none", *p0, *pool3, [False, True, True])],
    }


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_custom_op_has_samples(namespace):
    device = namespace_device(namespace)
    require_namespace(namespace, device)
    assert set(samples(namespace, device)) == set(CUSTOM_OPS)
    for op in CUSTOM_OPS:
        assert hasattr(getattr(torch.ops, namespace), op)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_registered_schemas_are_the_contract(namespace):
    """Every backend defines each op with the contract's schema (the C++ one in csrc/registration.cpp)."""
    require_namespace(namespace, namespace_device(namespace))
    for op in CUSTOM_OPS:
        registered = getattr(getattr(torch.ops, namespace), op).default._schema
        assert registered == torch._C.parse_schema(f"{namespace}::{op}{SCHEMAS[op]}"), op


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("op", CUSTOM_OPS)
@pytest.mark.parametrize("namespace", namespace_params())
def test_opcheck(namespace, op, device):
    require_namespace(namespace, device)
    for args in samples(namespace, device)[op]:
        torch.library.opcheck(getattr(getattr(torch.ops, namespace), op).default, args)
