"""max_pool2d against torch: bit-exact values and indices, PyTorch's output sizes, NaNs, ties, layouts,
gradients."""
import pytest
import torch
import torch.nn.functional as F

import dlkernels
from conftest import (
    BACKENDS,
    assert_close_to_reference,
    backend_matrix,
    device_dtype_params,
    device_params,
    make_input,
    require_backend,
)

CASES = [  # (N, C, H, W), kernel_size, stride, padding, dilation, ceil_mode
    ((2, 3, 8, 8), 2, None, 0, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, 1, True),  # overlapping windows
    ((1, 2, 7, 7), 3, 2, 1, 2, False),
    ((1, 3, 10, 10), (3, 2), (2, 1), (1, 0), 1, True),
    ((1, 1, 5, 5), 2, 3, 1, 1, True),  # ceil_mode: the last window would start in the right padding
    ((2, 5, 17, 33), 3, 1, 1, 1, False),
    ((1, 4, 6, 5), 3, 3, 0, 1, True),
    ((3, 2, 1, 9), (1, 3), (1, 2), 0, (1, 2), True),
    # enough channels and columns for whole vectors of 8 and 16 lanes plus a remainder, in both layouts
    ((2, 21, 9, 37), 3, 2, 1, 1, True),
    ((1, 19, 6, 40), 2, 2, 0, 1, False),
    ((2, 70, 7, 9), 3, 2, 1, 1, False),  # more channels than one call keeps in registers
    # whole 16-byte vectors of every dtype for the CUDA kernels: channels (channels_last) and output columns
    # (NCHW) multiples of 8
    ((2, 24, 9, 16), 3, 1, 1, 1, False),
    ((1, 32, 11, 31), 3, 2, 1, (2, 1), True),
]


def check_pool(case, dtype, device, backend, channels_last=False, values=None):
    shape, kernel_size, stride, padding, dilation, ceil_mode = case
    x = make_input(*shape, dtype=dtype, device=device) if values is None else values.to(device, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    out, indices = dlkernels.ops.max_pool2d(x, *args, return_indices=True, backend=backend)
    torch_out, torch_indices = F.max_pool2d(x, *args, return_indices=True)
    assert out.shape == torch_out.shape and out.dtype == torch_out.dtype
    torch.testing.assert_close(out, torch_out, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(indices, torch_indices)
    plain = dlkernels.ops.max_pool2d(x, *args, backend=backend)
    torch.testing.assert_close(plain, torch_out, rtol=0, atol=0, equal_nan=True)
    assert out.is_contiguous(memory_format=torch.channels_last) == torch_out.is_contiguous(
        memory_format=torch.channels_last
    )
    return x


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("channels_last", [False, True]), ("case", CASES)))
def test_forward_bit_exact(backend, device, dtype, channels_last, case):
    require_backend(backend, device)
    check_pool(case, dtype, device, backend, channels_last)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nans_and_ties(backend, device, channels_last):
    require_backend(backend, device)
    g = torch.Generator().manual_seed(0)
    # vector lanes and remainders in both layouts; more channels than one call keeps in registers
    for shape in [(2, 19, 9, 37), (1, 70, 9, 8), (1, 16, 9, 16)]:
        values = torch.randint(-2, 3, shape, generator=g).float()  # many ties
        values[values == 2] = float("nan")
        values[0, 0] = float("-inf")  # a plane of -inf: index is the first valid position of each window
        for case in CASES[:4]:
            check_pool((shape,) + case[1:], torch.float32, device, backend, channels_last=channels_last, values=values)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_and_empty(backend, device):
    require_backend(backend, device)
    x = make_input(3, 7, 6, device=device)
    out, indices = dlkernels.ops.max_pool2d(x, 2, return_indices=True, backend=backend)
    torch_out, torch_indices = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, torch_out) and torch.equal(indices, torch_indices)
    empty = dlkernels.ops.max_pool2d(torch.empty(0, 3, 8, 8, device=device), 2, backend=backend)
    assert empty.shape == (0, 3, 4, 4)


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("channels_last", [False, True]),
    ("case", [CASES[1], CASES[3], CASES[5], CASES[11], CASES[12]], ["case1", "case3", "case5", "case11", "case12"])))
def test_gradients_match_torch(backend, device, dtype, channels_last, case):
    require_backend(backend, device)
    shape, *args = case
    x = make_input(*shape, dtype=dtype, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    out = dlkernels.ops.max_pool2d(x, *args, backend=backend)
    grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=3)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (torch_grad,) = torch.autograd.grad(F.max_pool2d(x, *args), x, grad_out)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(grad, torch_grad)
    else:
        # Overlapping windows add several gradients into one element: we add them in float, torch in the
        # low-precision dtype, so compare both with float64 (same selection, the values convert exactly).
        x64 = x.detach().to("cpu", torch.float64).requires_grad_()
        (grad64,) = torch.autograd.grad(F.max_pool2d(x64, *args), x64, grad_out.to("cpu", torch.float64))
        assert_close_to_reference(grad, grad64, dtype, torch_grad)
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_buffers_on_huge_pages(channels_last):
    """Outputs of 8 MiB and more are allocated with the huge-page advice (csrc/cpu/memory.cpp)."""
    require_backend("native", "cpu")
    x = make_input(2, 16, 512, 512)  # 32 MiB; the output is 8 MiB, the indices 16 MiB
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    out, indices = dlkernels.ops.max_pool2d(x, 2, return_indices=True, backend="native")
    torch_out, torch_indices = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, torch_out) and torch.equal(indices, torch_indices)
    grad_out = make_input(*out.shape, seed=3)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (torch_grad,) = torch.autograd.grad(torch_out, x, grad_out)
    assert torch.equal(grad, torch_grad)


def test_gradient_of_the_plain_op():
    """The plain op computes no indices, except when autograd records: then its C++ autograd kernel computes
    and saves them (csrc/autograd.cpp), as torch's max_pool2d does."""
    require_backend("native", "cpu")
    x = make_input(1, 2, 6, 6, dtype=torch.float64).requires_grad_()
    args = ([3, 3], [2, 2], [1, 1], [1, 1], False)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        out = torch.ops.dlkernels.max_pool2d(x, *args)
    assert saved == [torch.float64, torch.int64]  # x and the indices
    (grad,) = torch.autograd.grad(out.sum(), x)
    (torch_grad,) = torch.autograd.grad(F.max_pool2d(x, *args).sum(), x)
    assert torch.equal(grad, torch_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    require_backend(backend, "cpu")
    x = make_input(2, 3, 7, 6, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: dlkernels.ops.max_pool2d(t, 3, 2, 1, ceil_mode=True, backend=backend), (x,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_vector_kernels_emulated(dtype, channels_last):
    """The CUDA kernels with 16-byte vectors (csrc/cuda/max_pool2d_kernels.cuh) run where their vectors are whole
    (channels_last: C a multiple of 16 bytes of elements; NCHW forward: OW one), the scalar ones elsewhere; both
    bit-exact with torch."""
    require_backend("cuda_emu", "cpu")
    from dlkernels import cuda_emu

    for case, vectors in [(CASES[12], True), (CASES[8], False)]:
        cuda_emu.reset_counters()
        x = check_pool(case, dtype, "cpu", "cuda_emu", channels_last)
        x.requires_grad_()
        out = dlkernels.ops.max_pool2d(x, *case[1:], backend="cuda_emu")
        grad_out = make_input(*out.shape, dtype=dtype, seed=3)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        (torch_grad,) = torch.autograd.grad(F.max_pool2d(x, *case[1:]), x, grad_out)
        if dtype != torch.bfloat16:
            assert torch.equal(grad, torch_grad)
        names = {k.split("<")[0].split("::")[-1] for k in cuda_emu.counters()}
        layout = "nhwc" if channels_last else "nchw"
        if vectors:
            expected = {f"max_pool2d_forward_{layout}_vec_kernel",
                        "max_pool2d_backward_nhwc_vec_kernel" if channels_last else "max_pool2d_backward_kernel"}
        else:
            expected = {"max_pool2d_forward_kernel", "max_pool2d_backward_kernel"}
        assert names == expected, (case, names)
