"""The fused Conv -> activation -> MaxPool block against the float64 reference max_pool2d(act(conv2d(x))):
conv stride, padding (ints, pairs, same), dilation, groups; pool kernel, stride, padding, ceil_mode; odd
sizes, layouts, unbatched and empty inputs; NaN and ties by PyTorch's pooling rule; gradients; what autograd
keeps; bad inputs."""
import pytest
import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import contract, reference
from conftest import (BACKENDS, BASE_ACTIVATIONS, NEW_ACTIVATION_CASES, assert_close_to_reference, backend_matrix,
                      device_dtype_params, device_params, make_input, require_backend)

# (N, C, H, W), (K, kH, kW), stride, padding, dilation, groups, (pool kernel, stride, padding, ceil_mode)
CASES = [
    ((2, 3, 9, 11), (5, 3, 3), 1, 1, 1, 1, (2, None, 0, False)),  # odd sizes: the last row and column dropped
    ((1, 4, 17, 13), (6, 3, 2), 2, (1, 0), 1, 2, (3, 2, 1, True)),  # overlapping windows, padding, ceil_mode
    ((3, 6, 11, 11), (6, 3, 3), 1, 2, 2, 6, ((2, 3), (1, 2), (1, 0), False)),  # depthwise, dilated, rectangles
    ((2, 3, 8, 8), (4, 1, 1), 1, 0, 1, 1, (4, None, 2, True)),  # 1x1 conv; windows mostly padding
    ((1, 3, 9, 8), (4, 4, 2), 1, "same", (2, 1), 1, (2, 1, 1, False)),  # "same" (asymmetric), pool stride 1
    ((2, 9, 6, 21), (7, 3, 3), 1, 1, 1, 1, (2, 2, 0, True)),  # 2x2/2 with ceil_mode: vector and scalar windows
    ((1, 2, 40, 37), (3, 3, 3), 1, 1, 1, 1, (2, 2, 0, False)),  # rows long enough for full 16-window vectors
    # The native backward's sparse path with runs of one tap's channels (groups, dilation along W), overlapping
    # windows (positions that receive several values), padding, ceil_mode:
    ((2, 16, 12, 14), (16, 3, 3), 1, 2, (1, 2), 2, (3, 2, 1, True)),
    # and with runs of a kernel row's channels, a strided conv, rectangular windows with padding:
    ((2, 5, 15, 13), (7, 3, 2), (2, 1), (1, 0), 1, 1, ((2, 3), 2, 1, True)),
]
CASE_IDS = ["2x2-odd", "3x3s2p1-ceil", "depthwise-rect", "1x1-pad2", "same-s1", "2x2-ceil-wide", "2x2-long-rows",
            "sparse-groups-dilated", "sparse-strided-rect"]
# The native backward takes its sparse path (from the routed values) in 2x2-odd, 2x2-ceil-wide and the sparse-*
# cases: the maxima are at most half of the conv positions and a run of channels (KW * C without groups or
# dilation along W, else C / groups) is at least 8; the dense one (conv2d's own passes) in the others.


def as64(t):
    return None if t is None else t.detach().to("cpu", torch.float64)


def pool_kwargs(pool):
    kernel, stride, padding, ceil_mode = pool
    return dict(pool_kernel_size=kernel, pool_stride=stride, pool_padding=padding, pool_ceil_mode=ceil_mode)


def ref_args(args):
    """reference.conv2d_maxpool's positional arguments after (x, weight, bias)."""
    stride, padding, dilation, groups, activation, params, pool = args
    return (stride, padding, dilation, groups, activation, params, *pool)


def integer_input(*shape, dtype, device, seed, low=-2, high=3):
    """Small integers: every conv of them is exact in every dtype (bfloat16 included), so windows tie often
    and all dtypes agree on the maxima."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).to(device=device, dtype=dtype)


def run_case(case, dtype, device, activation, backend, channels_last=False, requires_grad=False, params=None,
             integers=False):
    (n, c, h, w), (k, kh, kw), stride, padding, dilation, groups, pool = case
    # Quarters of small integers: exact convs, and activations short of saturation (where act' from a rounded
    # output is all rounding).
    make = (lambda *s, seed: integer_input(*s, dtype=dtype, device=device, seed=seed) / 4) if integers else (
        lambda *s, seed: make_input(*s, dtype=dtype, device=device, seed=seed))
    x = make(n, c, h, w, seed=1)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = make(k, c // groups, kh, kw, seed=2)
    bias = make(k, seed=3)
    for t in (x, weight, bias):
        t.requires_grad_(requires_grad)
    out = dlkernels.ops.conv2d_maxpool(x, weight, bias, stride, padding, dilation, groups, activation,
                                       **pool_kwargs(pool), backend=backend, activation_params=params)
    return (x, weight, bias), out, (stride, padding, dilation, groups, activation, params, pool)


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("activation", ["none", "relu", "gelu"]), ("case", CASES, CASE_IDS)))
def test_forward(backend, device, dtype, activation, case):
    require_backend(backend, device)
    (x, weight, bias), out, args = run_case(case, dtype, device, activation, backend)
    expected = reference.conv2d_maxpool(as64(x), as64(weight), as64(bias), *ref_args(args))
    assert_close_to_reference(out, expected, dtype, reference.conv2d_maxpool(x, weight, bias, *ref_args(args)))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("activation", dlkernels.ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_activation(backend, device, activation):
    """Forward and gradients in float64 (the non-monotonic ones, gelu, silu, hardswish, mish, pool after the
    activation: max(act(z)) is not act(max(z)))."""
    require_backend(backend, device)
    leaves, out, args = run_case(CASES[1], torch.float64, device, activation, backend, requires_grad=True)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d_maxpool(*leaves64, *ref_args(args))
    assert_close_to_reference(out, out64, torch.float64)
    grad_out = make_input(*out.shape, dtype=torch.float64, device=device, seed=4)
    for grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out),
                            torch.autograd.grad(out64, leaves64, as64(grad_out))):
        assert_close_to_reference(grad, grad64, torch.float64)


@pytest.mark.parametrize("device,dtype", [(d, t) for d, t in device_dtype_params() if t != torch.bfloat16])
@pytest.mark.parametrize("activation,params", NEW_ACTIVATION_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_new_activations(backend, device, dtype, activation, params):
    require_backend(backend, device)
    leaves, out, args = run_case(CASES[0], dtype, device, activation, backend, requires_grad=True, params=params)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d_maxpool(*leaves64, *ref_args(args))
    assert_close_to_reference(out, out64, dtype)
    grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=4)
    for grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out),
                            torch.autograd.grad(out64, leaves64, as64(grad_out))):
        assert_close_to_reference(grad, grad64, dtype)


def window_index(x, weight, bias, args, backend):
    """The forward's window index (the native or Triton op called directly)."""
    stride, padding, dilation, groups, activation, params, pool = args
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]
    kernel, pool_stride, pool_padding, ceil_mode = pool
    alpha, beta = contract.activation_args(activation, params)
    namespace = getattr(torch.ops, dlkernels.ops.NAMESPACES[backend])
    return namespace.conv2d_maxpool(x.detach(), weight.detach(), bias.detach(), pair(stride), pair(padding),
                                    pair(dilation), groups, activation, alpha, beta, pair(kernel),
                                    pair(pool_stride or kernel), pair(pool_padding), ceil_mode)[1]


def routed_reference(x, weight, bias, args, index):
    """act(conv2d(x)) taken at the maxima the index names: the block's function for a given choice of maxima,
    differentiable (for checking a backward apart from the forward's choice)."""
    stride, padding, dilation, groups, activation, params, pool = args
    y = reference.conv2d(x, weight, bias, stride, padding, dilation, groups, activation, params)
    kernel, pool_stride, pool_padding, _ = pool
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    (_, kw), (sh, sw), (ph, pw) = pair(kernel), pair(pool_stride or kernel), pair(pool_padding)
    index = index.to(y.device).long()
    h = torch.arange(index.shape[2], device=y.device).view(-1, 1) * sh - ph + index // kw
    w = torch.arange(index.shape[3], device=y.device).view(1, -1) * sw - pw + index % kw
    flat = (h * y.shape[3] + w).flatten(2)
    return y.flatten(2).gather(2, flat).view(index.shape)


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("activation", BASE_ACTIVATIONS),
    ("case", [CASES[i] for i in (0, 1, 2, 5, 7, 8)], [CASE_IDS[i] for i in (0, 1, 2, 5, 7, 8)]),
    ("channels_last", [False, True])))
def test_gradients(backend, device, dtype, activation, case, channels_last):
    """Gradients of x, weight and bias against the float64 reference. In bfloat16 the rounding of act(z) makes
    ties that float64 does not have (and which maximum wins depends on the last bit of the activation), so
    there the gradients are checked for the maxima the forward chose (routed_reference; the forward's values
    are checked by test_forward): bfloat16 runs on quarters of small integers, whose convs are exact."""
    require_backend(backend, device)
    low = dtype == torch.bfloat16
    leaves, out, args = run_case(case, dtype, device, activation, backend, channels_last=channels_last,
                                 requires_grad=True, integers=low)
    grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=4)
    grads = torch.autograd.grad(out, leaves, grad_out)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    if low:
        index = window_index(*leaves, args, backend)
        torch_grads = torch.autograd.grad(routed_reference(*leaves, args, index), leaves, grad_out)
        grads64 = torch.autograd.grad(routed_reference(*leaves64, args, index), leaves64, as64(grad_out))
    else:
        torch_grads = torch.autograd.grad(reference.conv2d_maxpool(*leaves, *ref_args(args)), leaves, grad_out)
        grads64 = torch.autograd.grad(reference.conv2d_maxpool(*leaves64, *ref_args(args)), leaves64,
                                      as64(grad_out))
    for grad, torch_grad, grad64 in zip(grads, torch_grads, grads64):
        assert_close_to_reference(grad, grad64, dtype, torch_grad)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_ties_follow_torch(backend, device):
    """A depthwise 1x1 conv of weight 1 is the identity, so the block is max_pool2d(act(x)): every value and
    window index must be torch's, bit for bit, with NaNs (the last NaN of a window wins) and ties (the first
    maximum wins) in the windows; so must the gradients of none and relu (selects). A backend's sigmoid and its
    derivative may round apart from torch's in the last bit; and at a NaN that is not its window's maximum torch's
    composite computes 0 * sigmoid'(NaN) = NaN, where the block routes nothing (0): only the maxima get a
    gradient (the loss is NaN there anyway)."""
    require_backend(backend, device)
    x = integer_input(2, 3, 9, 10, dtype=torch.float32, device=device, seed=5, low=-1, high=2)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = float("nan")
    x[1, 2, 4, 4] = float("nan")
    x[1, 1, :4, :4] = float("-inf")
    weight = torch.ones(3, 1, 1, 1, device=device)
    for activation in ("none", "relu", "sigmoid"):
        for pool in ((2, None, 0, False), (3, 2, 1, True), (3, 1, 1, False)):
            x_ours = x.clone().requires_grad_()
            x_torch = x.clone().requires_grad_()
            out = dlkernels.ops.conv2d_maxpool(x_ours, weight, None, groups=3, activation=activation,
                                               **pool_kwargs(pool), backend=backend)
            expected, indices = F.max_pool2d(reference.activation(x_torch, activation), pool[0], pool[1], pool[2],
                                             ceil_mode=pool[3], return_indices=True)
            exact = dict(rtol=0, atol=0) if activation != "sigmoid" else {}  # a backend's sigmoid may round apart
            torch.testing.assert_close(out, expected, equal_nan=True, **exact)
            grad_out = make_input(*out.shape, device=device, seed=6)
            (grad,) = torch.autograd.grad(out, x_ours, grad_out)
            (grad_torch,) = torch.autograd.grad(expected, x_torch, grad_out)
            if activation == "sigmoid":
                not_max = x.isnan() & (grad == 0)  # NaNs that lost to a later NaN of their window
                assert torch.all(grad_torch[not_max].isnan())
                grad_torch = torch.where(not_max, 0.0, grad_torch)
            torch.testing.assert_close(grad, grad_torch, equal_nan=True, **exact)
            # The window index names torch's index: (h0 + i // kw) * W + w0 + i % kw.
            namespace = getattr(torch.ops, dlkernels.ops.NAMESPACES[backend])
            kernel, stride = pool[0], pool[1] or pool[0]
            _, index = namespace.conv2d_maxpool(x, weight, None, [1, 1], [0, 0], [1, 1], 3, activation, 0.0, 0.0,
                                                [kernel] * 2, [stride] * 2, [pool[2]] * 2, pool[3])
            assert index.dtype == torch.int8
            ph = torch.arange(index.shape[2], device=device).view(-1, 1) * stride - pool[2]
            pw = torch.arange(index.shape[3], device=device).view(1, -1) * stride - pool[2]
            flat = (ph + index.long() // kernel) * x.shape[3] + pw + index.long() % kernel
            assert torch.equal(flat, indices), (activation, pool)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_window_takes_an_int32_index(backend, device):
    require_backend(backend, device)
    (x, weight, bias), out, args = run_case(((1, 2, 12, 13), (3, 1, 1), 1, 0, 1, 1, ((12, 11), 1, 0, False)),
                                            torch.float64, device, "relu", backend, requires_grad=True)
    expected = reference.conv2d_maxpool(as64(x), as64(weight), as64(bias), *ref_args(args))
    assert_close_to_reference(out, expected, torch.float64)
    assert contract.pool_index_dtype((12, 11)) == torch.int32
    assert contract.pool_index_dtype((8, 16)) == torch.int8
    grad = torch.autograd.grad(out.sum(), x)[0]
    x64 = as64(x).requires_grad_()
    expected_grad = torch.autograd.grad(reference.conv2d_maxpool(x64, as64(weight), as64(bias), *ref_args(args)).sum(),
                                        x64)[0]
    assert_close_to_reference(grad, expected_grad, torch.float64)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_unbatched_and_no_bias(backend, device):
    require_backend(backend, device)
    x = make_input(3, 12, 9, device=device)[:, ::2, :]  # 3-D and strided
    weight = make_input(4, 3, 3, 3, device=device, seed=1)
    out = dlkernels.ops.conv2d_maxpool(x, weight, None, padding=1, activation="silu", pool_kernel_size=3,
                                       pool_stride=2, backend=backend)
    expected = reference.conv2d_maxpool(as64(x).unsqueeze(0), as64(weight), None, 1, 1, 1, 1, "silu", None, 3,
                                        2).squeeze(0)
    assert_close_to_reference(out, expected, torch.float32)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    require_backend(backend, device)
    x = make_input(0, 3, 8, 8, device=device).requires_grad_()
    weight = make_input(4, 3, 3, 3, device=device).requires_grad_()
    bias = make_input(4, device=device).requires_grad_()
    out = dlkernels.ops.conv2d_maxpool(x, weight, bias, padding=1, backend=backend)
    assert out.shape == (0, 4, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    require_backend(backend, "cpu")
    x = make_input(2, 4, 7, 6, dtype=torch.float64).requires_grad_()
    weight = make_input(4, 2, 3, 2, dtype=torch.float64, seed=1).requires_grad_()
    bias = make_input(4, dtype=torch.float64, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: dlkernels.ops.conv2d_maxpool(*a, stride=(1, 2), padding=1, dilation=(2, 1), groups=2,
                                                activation="tanh", pool_kernel_size=(3, 2), pool_stride=(2, 1),
                                                pool_padding=1, pool_ceil_mode=True, backend=backend),
        (x, weight, bias), fast_mode=backend == "triton")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("pool", [(2, None, 0, False), (3, 2, 1, True)], ids=["2x2", "3x3s2p1"])
def test_native_large_shapes(activation, pool):
    """Shapes past the native kernel's blocking: more than one K slice (80 channels x 3 x 3 = 720), more
    output channels than one block (136), several bands per image, the AVX-512/AVX2 2x2 pooling."""
    require_backend("native", "cpu")
    case = ((2, 80, 23, 30), (136, 3, 3), 1, 1, 1, 1, pool)
    leaves, out, args = run_case(case, torch.float32, "cpu", activation, "native", requires_grad=True)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d_maxpool(*leaves64, *ref_args(args))
    assert_close_to_reference(out, out64, torch.float32)
    grad_out = make_input(*out.shape, seed=4)
    for grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out),
                            torch.autograd.grad(out64, leaves64, as64(grad_out))):
        torch.testing.assert_close(grad.double(), grad64, atol=2e-3, rtol=1e-3)


def unfused_native(leaves, case, activation):
    _, _, stride, padding, dilation, groups, (kernel, pool_stride, pool_padding, ceil_mode) = case
    conv = dlkernels.ops.conv2d(*leaves, stride, padding, dilation, groups, activation=activation, backend="native")
    return dlkernels.ops.max_pool2d(conv, kernel, pool_stride, pool_padding, ceil_mode=ceil_mode, backend="native")


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("case", [
    ((3, 10, 14, 13), (10, 3, 3), 1, 1, 1, 1, (3, 1, 1, False)),  # windows at stride 1: most positions are maxima
    ((3, 10, 14, 13), (10, 3, 3), 1, 1, 1, 1, (2, 1, 0, False)),
    ((3, 2, 14, 13), (10, 3, 3), 1, 1, 1, 1, (3, 2, 1, True)),  # two input channels: runs of 6
], ids=["3x3s1", "2x2s1", "2ch-3x3s2p1"])
def test_native_dense_backward_is_bitwise_conv2d_then_max_pool2d(activation, case):
    """Where the native block's backward takes the dense path (conv2d's own passes over the full-size dL/dz) it
    computes exactly what the native conv2d followed by max_pool2d computes (the same GEMM, the same sums), as its
    forward always does: a model trains the same with the block as with the three layers, where a last-bit
    difference could flip a near-tie of some window and send the runs apart."""
    require_backend("native", "cpu")
    leaves, out, args = run_case(case, torch.float32, "cpu", activation, "native", requires_grad=True)
    unfused = unfused_native(leaves, case, activation)
    assert torch.equal(out, unfused)
    grad_out = make_input(*out.shape, seed=4)
    expected_grads = torch.autograd.grad(unfused, leaves, grad_out)
    for grad, expected in zip(torch.autograd.grad(out, leaves, grad_out), expected_grads):
        assert torch.equal(grad, expected)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("pool", [(2, None, 0, False), (3, 2, 1, True)], ids=["2x2", "3x3s2p1"])
@pytest.mark.parametrize("shape", [((3, 10, 14, 13), 10), ((1, 40, 14, 13), 40), ((2, 32, 34, 30), 32)],
                         ids=["direct", "gemm", "winograd"])
def test_native_sparse_backward_matches_conv2d_then_max_pool2d(activation, pool, shape):
    """Where the native block's backward takes the sparse path (the gradients from the routed values alone) its
    forward is still bit for bit the unfused layers' (the same direct, GEMM or Winograd kernel), and its
    gradients are theirs up to the summation order: within rounding of them and of the float64 reference."""
    require_backend("native", "cpu")
    x_shape, channels = shape
    case = (x_shape, (channels, 3, 3), 1, 1, 1, 1, pool)
    leaves, out, args = run_case(case, torch.float32, "cpu", activation, "native", requires_grad=True)
    unfused = unfused_native(leaves, case, activation)
    assert torch.equal(out, unfused)
    grad_out = make_input(*out.shape, seed=4)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    grads64 = torch.autograd.grad(reference.conv2d_maxpool(*leaves64, *ref_args(args)), leaves64, as64(grad_out))
    unfused_grads = torch.autograd.grad(unfused, leaves, grad_out)
    for grad, unfused_grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out), unfused_grads, grads64):
        assert_close_to_reference(grad, grad64, torch.float32)
        # another summation order: the unfused gradients' rounding at their scale
        torch.testing.assert_close(grad, unfused_grad, rtol=1e-5, atol=1e-5 * unfused_grad.abs().max().item())


def test_native_sparse_backward_every_run_length():
    """The sparse backward's gathered multiply-adds run over channel runs of KW * C values in blocks of up to 8
    vectors and a remainder of 1 to 8 vectors (the last one partial): input channel counts whose runs end in
    every remainder of an AVX-512 and an AVX2 block, against the float64 reference."""
    require_backend("native", "cpu")
    for channels in range(8, 56, 3):
        case = ((1, channels, 10, 9), (12, 3, 3), 1, 1, 1, 1, (2, None, 0, False))
        leaves, out, args = run_case(case, torch.float32, "cpu", "relu", "native", requires_grad=True)
        leaves64 = [as64(t).requires_grad_() for t in leaves]
        grad_out = make_input(*out.shape, seed=4)
        grads64 = torch.autograd.grad(reference.conv2d_maxpool(*leaves64, *ref_args(args)), leaves64,
                                      as64(grad_out))
        for grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out), grads64):
            assert_close_to_reference(grad, grad64, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keeps_only_the_pooled_output_and_a_small_index(backend):
    """What autograd saves: x and weight (for the gradients), the pooled output (relu's derivative) and the
    int8 window index; nothing of the conv output's size."""
    require_backend(backend, "cpu")
    x = make_input(2, 3, 16, 16).requires_grad_()
    weight = make_input(8, 3, 3, 3, seed=1).requires_grad_()
    bias = make_input(8, seed=2).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = dlkernels.ops.conv2d_maxpool(x, weight, bias, padding=1, backend=backend)
    shapes = sorted((tuple(t.shape), str(t.dtype)) for t in saved)
    assert shapes == sorted([(tuple(x.shape), str(x.dtype)), (tuple(weight.shape), str(weight.dtype)),
                             (tuple(out.shape), str(out.dtype)), (tuple(out.shape), str(torch.int8))]), shapes


x4, w4, b4 = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)
block = dlkernels.ops.conv2d_maxpool
BAD_CALLS = {
    "x dtype": (lambda b: block(x4.int(), w4, backend=b), TypeError, "'x'.*floating point"),
    "weight dtype": (lambda b: block(x4, w4.double(), backend=b), TypeError, "'weight' of dtype"),
    "x rank": (lambda b: block(x4[0, 0], w4, backend=b), ValueError, "3-D .* or 4-D"),
    "channels": (lambda b: block(x4[:, :3], w4, backend=b), ValueError, r"weight.shape\[1\] \* groups"),
    "bias shape": (lambda b: block(x4, w4, b4[:2], backend=b), ValueError, "'bias' of shape"),
    "conv stride": (lambda b: block(x4, w4, stride=0, backend=b), ValueError, "'stride' to be >= 1"),
    "pool kernel": (lambda b: block(x4, w4, pool_kernel_size=0, backend=b), ValueError,
                    "'pool_kernel_size' to be >= 1"),
    "pool kernel type": (lambda b: block(x4, w4, pool_kernel_size=2.5, backend=b), TypeError,
                         "'pool_kernel_size' to be an int"),
    "pool stride": (lambda b: block(x4, w4, pool_stride=(1, 0), backend=b), ValueError, "'pool_stride' to be >= 1"),
    "pool padding": (lambda b: block(x4, w4, pool_kernel_size=2, pool_padding=2, backend=b), ValueError,
                     "'pool_padding' to be at most half"),
    "pool too large": (lambda b: block(x4, w4, pool_kernel_size=7, backend=b), ValueError, "too small"),
    "activation": (lambda b: block(x4, w4, activation="swish", backend=b), ValueError, "unknown activation"),
    "activation params": (lambda b: block(x4, w4, activation="leaky_relu", activation_params={"slope": 1},
                                          backend=b), ValueError, "'activation_params'"),
    "backend": (lambda b: block(x4, w4, backend="fast"), ValueError, "unknown backend"),
}


@pytest.mark.parametrize("backend", ["native", "triton", "reference"])
@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_inputs_name_the_argument(name, backend):
    if backend != "reference":
        require_backend(backend, "cpu")
    call, error, message = BAD_CALLS[name]
    with pytest.raises(error, match=message):
        call(backend)


def test_raw_backward_op_checks_the_index_and_grad_out():
    require_backend("native", "cpu")
    args = ([1, 1], [1, 1], [1, 1], 1, "relu", 0.0, 0.0, [2, 2], [2, 2], [0, 0], False)
    out, index = torch.ops.dlkernels.conv2d_maxpool(x4, w4, b4, *args)
    backward = torch.ops.dlkernels.conv2d_maxpool_backward
    with pytest.raises(TypeError, match="'index' of dtype Char"):
        backward(out, x4, w4, b4, out, index.long(), *args, [True] * 3)
    with pytest.raises(ValueError, match="'index' of shape"):
        backward(out, x4, w4, b4, out, index[:1], *args, [True] * 3)
    with pytest.raises(RuntimeError, match="'grad_out' of shape"):
        backward(out[:, :2], x4, w4, b4, out, index, *args, [True] * 3)
    with pytest.raises(RuntimeError, match="'out' must be given"):
        backward(out, x4, w4, b4, None, index, *args, [True] * 3)
