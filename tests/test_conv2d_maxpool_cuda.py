"""The CUDA kernels of the fused Conv -> activation -> MaxPool block (csrc/cuda/conv2d_maxpool_cuda.cu and
conv2d_maxpool_kernels.cuh) where the shared matrix of tests/test_conv2d_maxpool.py does not reach: each tile
forced with DLKERNELS_CUDA_CONV_CONFIG, float16 and float32 as TF32, channels_last with 16-byte gathers,
windows that overlap (the conv rows two CTAs share), hang over the pooling padding or the ceil_mode edge,
windows too large for the medium tile or for any tile, NaN and ties in the implicit GEMM's epilogue; in the
CUDA emulator on CPU tensors, and on the GPU when there is one."""
import pytest
import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import reference
from conftest import assert_close_to_reference, make_input, require_backend, tf32_flags
from test_conv2d_maxpool import (BAD_CALLS, as64, integer_input, ref_args, routed_reference, run_case,
                                 window_index)

CUDA_TARGETS = [pytest.param(("cuda_emu", "cpu"), id="emu")] + (
    [pytest.param(("native", "cuda"), id="gpu", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])
CONV_CONFIGS = ["direct", "large", "medium"]
# (N, C, H, W), (K, kH, kW), stride, padding, dilation, groups, (pool kernel, stride, padding, ceil_mode)
BLOCK_CASES = [
    ((2, 16, 9, 11), (24, 3, 3), 1, 1, 1, 1, (2, None, 0, False)),  # channels of 16 bytes: vector gathers
    ((1, 6, 13, 12), (5, 3, 2), 1, (1, 0), (2, 1), 1, (3, 2, 1, True)),  # odd channels, overlap, padding, ceil
    ((2, 8, 10, 9), (10, 3, 3), 1, 1, 1, 2, ((3, 2), 1, (1, 0), False)),  # groups; stride-1 windows
    ((1, 4, 12, 12), (70, 1, 1), 1, 0, 1, 1, (9, 3, 0, True)),  # 81 positions: the large tile; two column tiles
    ((1, 3, 14, 13), (4, 1, 1), 1, 0, 1, 1, ((12, 11), 2, 0, True)),  # 132 positions: the direct kernel, int32
]
BLOCK_IDS = ["2x2-vec", "3x3s2p1-ceil", "groups-s1", "9x9-large", "12x11-direct"]


def tf32_bound(x64, w64, b64, args):
    """A bound on the error of the block in float32 with TF32 operands (unit roundoff 2^-11): a few units of
    |x| (*) |w| + |b|, at most its largest value (the max of values each within the bound is within it)."""
    stride, padding, dilation, groups = args[:4]
    mag = reference.conv2d(x64.abs(), w64.abs(), b64.abs(), stride, padding, dilation, groups, "none", None)
    return 8 * 2.0**-11 * mag.max().item() + 1e-6


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("config", CONV_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=BLOCK_IDS)
def test_cuda_block_configurations(target, config, dtype, channels_last, case, monkeypatch):
    """Forward against the float64 reference; the window index names a position holding the pooled value; the
    three gradients against the float64 reference routed through the forward's own maxima (low-precision
    rounding makes ties float64 does not have)."""
    backend, device = target
    require_backend(backend, device)
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", config)
    with tf32_flags(cudnn=True):
        leaves, out, args = run_case(case, dtype, device, "silu", backend, channels_last=channels_last,
                                     requires_grad=True)
        grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=4)
        grads = torch.autograd.grad(out, leaves, grad_out)
        index = window_index(*leaves, args, backend).cpu()
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    leaves_cpu = [t.detach().cpu() for t in leaves]
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d_maxpool(*leaves64, *ref_args(args))
    if dtype == torch.float32:
        bound = tf32_bound(*(t.detach() for t in leaves64), args)
        assert (out.detach().cpu().double() - out64.detach()).abs().max().item() <= bound
    else:
        assert_close_to_reference(out.cpu(), out64, dtype, reference.conv2d_maxpool(*leaves_cpu, *ref_args(args)))

    kernel = args[6][0] if isinstance(args[6][0], tuple) else (args[6][0],) * 2
    assert index.dtype == dlkernels.contract.pool_index_dtype(kernel)
    # The index names a conv position whose value (in float64) is the pooled output's, within the rounding.
    routed64 = routed_reference(*leaves64, args, index)
    if dtype == torch.float32:
        assert (out.detach().cpu().double() - routed64.detach()).abs().max().item() <= bound
    else:
        assert_close_to_reference(out.cpu(), routed64, dtype, routed_reference(*leaves_cpu, args, index))

    grads64 = torch.autograd.grad(routed64, leaves64, as64(grad_out))
    leaves_t = [t.clone().requires_grad_() for t in leaves_cpu]
    torch_grads = torch.autograd.grad(routed_reference(*leaves_t, args, index), leaves_t, grad_out.cpu())
    for grad, torch_grad, grad64 in zip(grads, torch_grads, grads64):
        if dtype == torch.float32:  # TF32 operands: a few units of 2^-11 of the gradient's scale
            scale = grad64.abs().max().item()
            torch.testing.assert_close(grad.cpu().double(), grad64, atol=2e-2 * scale + 1e-6, rtol=0)
        else:
            assert_close_to_reference(grad.cpu(), grad64, dtype, torch_grad)


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("config", ["large", "medium"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pool", [(2, None, 0, False), (3, 2, 1, True), (3, 1, 1, False)], ids=["2x2", "3x3s2p1",
                                                                                                "3x3s1p1"])
def test_cuda_epilogue_pools_by_torch_rule(target, config, dtype, channels_last, pool, monkeypatch):
    """The implicit GEMM's pooling epilogue against torch's max_pool2d, bit for bit: a 1x1 conv with an identity
    weight (exact in every dtype, TF32 included) of small integers with NaN and -inf, so windows tie and NaN
    must propagate (the last NaN of a window wins). NaN and -inf reach every channel of their position (NaN * 0
    and -inf * 0 are NaN), as in the float64 conv the expectation is built from."""
    backend, device = target
    require_backend(backend, device)
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", config)
    c = 16
    x = integer_input(2, c, 9, 10, dtype=torch.float64, device="cpu", seed=5, low=-1, high=2)
    x[0, 0, 0, 1] = x[0, 3, 1, 0] = float("nan")
    x[1, 2, 4, 4] = float("nan")
    x[1, 1, 0, 0] = float("-inf")
    weight = torch.eye(c, dtype=torch.float64).view(c, c, 1, 1)
    kernel, stride, padding, ceil_mode = pool
    for activation in ("none", "relu"):
        expected, indices = F.max_pool2d(reference.activation(F.conv2d(x, weight), activation).to(dtype), kernel,
                                         stride, padding, ceil_mode=ceil_mode, return_indices=True)
        xd = x.to(device=device, dtype=dtype)
        if channels_last:
            xd = xd.to(memory_format=torch.channels_last)
        with tf32_flags(cudnn=True):
            out, index = getattr(torch.ops, dlkernels.ops.NAMESPACES[backend]).conv2d_maxpool(
                xd, weight.to(device=device, dtype=dtype), None, [1, 1], [0, 0], [1, 1], 1, activation, 0.0, 0.0,
                [kernel] * 2, [stride or kernel] * 2, [padding] * 2, ceil_mode)
        torch.testing.assert_close(out.cpu(), expected, equal_nan=True, rtol=0, atol=0)
        s = stride or kernel
        ph = torch.arange(index.shape[2]).view(-1, 1) * s - padding
        pw = torch.arange(index.shape[3]).view(1, -1) * s - padding
        flat = (ph + index.cpu().long() // kernel) * x.shape[3] + pw + index.cpu().long() % kernel
        assert torch.equal(flat, indices), (activation, pool)


def emulated_kernels(counters, prefix):
    return {k.split("<")[0].split("::")[-1]: v for k, v in counters.items() if prefix in k.split("<")[0]}


def test_cuda_block_fuses_the_pooling_emulated(monkeypatch):
    """The emulator's counters: the forward runs one kernel, the implicit GEMM with the pooling epilogue (no
    conv2d kernel writes the conv output), its ldmatrix and cp.async free of bank conflicts and its 16-byte
    gathers in full sectors; the backward of gelu recomputes z with conv2d's forward, routes, and runs
    conv2d's gradient GEMMs; "direct" runs the direct block kernel."""
    require_backend("cuda_emu", "cpu")
    from dlkernels import cuda_emu

    x = make_input(2, 64, 8, 8, dtype=torch.bfloat16, seed=1).to(memory_format=torch.channels_last)
    weight = make_input(64, 64, 3, 3, dtype=torch.bfloat16, seed=2)
    x.requires_grad_()
    weight.requires_grad_()
    for config in ("large", "medium"):
        monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", config)
        cuda_emu.reset_counters()
        out = dlkernels.ops.conv2d_maxpool(x, weight, None, padding=1, activation="gelu", backend="cuda_emu")
        forward = cuda_emu.counters()
        assert set(emulated_kernels(forward, "conv2d")) == {"conv2d_maxpool_forward_kernel"}, sorted(forward)
        c = emulated_kernels(forward, "conv2d")["conv2d_maxpool_forward_kernel"]
        assert c["mma"] > 0 and c["ldmatrix"] > 0 and c["cp_async"] > 0, c
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], (config, c)
        assert c["cp_async_wavefronts"] == c["cp_async_ideal_wavefronts"], (config, c)
        assert c["cp_async_global_sectors"] * 32 == c["cp_async_global_bytes"], (config, c)
        cuda_emu.reset_counters()
        torch.autograd.grad(out, (x, weight), make_input(*out.shape, dtype=torch.bfloat16, seed=3))
        backward = emulated_kernels(cuda_emu.counters(), "conv2d")
        assert {"conv2d_forward_kernel", "conv2d_maxpool_route_kernel", "conv2d_grad_input_kernel",
                "conv2d_grad_weight_kernel"} <= set(backward), sorted(backward)
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", "direct")
    cuda_emu.reset_counters()
    dlkernels.ops.conv2d_maxpool(x[:1, :8, :4, :4], weight[:4, :8], None, padding=1, backend="cuda_emu")
    assert set(emulated_kernels(cuda_emu.counters(), "conv2d")) == {"conv2d_maxpool_direct_forward_kernel"}


@pytest.mark.parametrize("value", ["huge", "Direct"])
def test_cuda_block_config_variable_is_checked_emulated(value, monkeypatch):
    require_backend("cuda_emu", "cpu")
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", value)
    x, weight = make_input(1, 8, 6, 6, dtype=torch.bfloat16), make_input(8, 8, 3, 3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="DLKERNELS_CUDA_CONV_CONFIG"):
        dlkernels.ops.conv2d_maxpool(x, weight, None, backend="cuda_emu")


@pytest.mark.parametrize("name", BAD_CALLS)
def test_cuda_block_bad_inputs_name_the_argument_emulated(name):
    require_backend("cuda_emu", "cpu")
    call, error, message = BAD_CALLS[name]
    with pytest.raises(error, match=message):
        call("cuda_emu")
