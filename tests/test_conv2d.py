"""conv2d against the float64 reference: stride, padding (ints, pairs, same, valid), dilation, groups,
layouts, unbatched and empty inputs, gradients."""
import pytest
import torch

import dlkernels
from dlkernels import reference
from conftest import (BACKENDS, BASE_ACTIVATIONS, DTYPES, NEW_ACTIVATION_CASES, NEW_ACTIVATIONS,
                      assert_close_to_reference, backend_matrix, device_dtype_params, device_params, make_input,
                      require_backend, tf32_flags)

CASES = [  # (N, C, H, W), (K, kH, kW), stride, padding, dilation, groups
    ((2, 3, 7, 9), (5, 3, 3), 1, 1, 1, 1),
    ((1, 4, 17, 13), (6, 3, 2), 2, (1, 0), 1, 2),
    ((3, 6, 11, 11), (6, 3, 3), 1, 2, 2, 6),  # depthwise, dilated
    ((2, 3, 8, 8), (4, 1, 1), 1, 0, 1, 1),  # 1x1
    ((1, 2, 5, 5), (3, 5, 5), 1, 0, 1, 1),  # kernel as large as the input
    ((1, 3, 9, 8), (4, 4, 2), 1, "same", (2, 1), 1),  # "same" with an asymmetric split
    ((2, 4, 10, 7), (8, 3, 3), (3, 2), "valid", 1, 4),
    ((1, 1, 33, 3), (2, 3, 3), (1, 2), (2, 1), (1, 1), 1),
    ((2, 9, 6, 21), (7, 3, 3), 1, 1, 1, 1),  # rows wide enough for the CPU packers' vector paths
]


def as64(t):
    return None if t is None else t.detach().to("cpu", torch.float64)


def run_case(case, dtype, device, activation, backend, channels_last=False, requires_grad=False, params=None):
    (n, c, h, w), (k, kh, kw), stride, padding, dilation, groups = case
    x = make_input(n, c, h, w, dtype=dtype, device=device, seed=1)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = make_input(k, c // groups, kh, kw, dtype=dtype, device=device, seed=2)
    bias = make_input(k, dtype=dtype, device=device, seed=3)
    for t in (x, weight, bias):
        t.requires_grad_(requires_grad)
    args = (stride, padding, dilation, groups, activation, params)
    out = dlkernels.ops.conv2d(x, weight, bias, *args[:-1], backend=backend, activation_params=params)
    return (x, weight, bias), out, args


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("activation", ["none", "relu", "gelu"]), ("case", CASES)))
def test_forward(backend, device, dtype, activation, case):
    require_backend(backend, device)
    (x, weight, bias), out, args = run_case(case, dtype, device, activation, backend)
    expected = reference.conv2d(as64(x), as64(weight), as64(bias), *args)
    assert_close_to_reference(out, expected, dtype, reference.conv2d(x, weight, bias, *args))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("activation", dlkernels.ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_activation(backend, device, activation):
    require_backend(backend, device)
    (x, weight, bias), out, args = run_case(CASES[0], torch.float32, device, activation, backend)
    assert_close_to_reference(out, reference.conv2d(as64(x), as64(weight), as64(bias), *args), torch.float32)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_in_channels_last_out(backend, device):
    require_backend(backend, device)
    (x, weight, bias), out, args = run_case(CASES[1], torch.float32, device, "relu", backend, channels_last=True)
    torch_out = reference.conv2d(x, weight, bias, *args)
    assert out.is_contiguous(memory_format=torch.channels_last) == torch_out.is_contiguous(
        memory_format=torch.channels_last
    )
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, reference.conv2d(as64(x), as64(weight), as64(bias), *args), torch.float32)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_unbatched_and_no_bias(backend, device):
    require_backend(backend, device)
    x = make_input(3, 12, 9, device=device)[:, ::2, :]  # 3-D and strided
    weight = make_input(4, 3, 3, 3, device=device, seed=1)
    out = dlkernels.ops.conv2d(x, weight, None, padding=1, activation="silu", backend=backend)
    expected = reference.conv2d(as64(x).unsqueeze(0), as64(weight), None, 1, 1, 1, 1, "silu", None).squeeze(0)
    assert_close_to_reference(out, expected, torch.float32)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    require_backend(backend, device)
    x = make_input(0, 3, 8, 8, device=device).requires_grad_()
    weight = make_input(4, 3, 3, 3, device=device).requires_grad_()
    bias = make_input(4, device=device).requires_grad_()
    out = dlkernels.ops.conv2d(x, weight, bias, padding=1, activation="relu", backend=backend)
    assert out.shape == (0, 4, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize("device,dtype", [(d, t) for d, t in device_dtype_params() if t != torch.bfloat16])
@pytest.mark.parametrize("activation,params", NEW_ACTIVATION_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_new_activations(backend, device, dtype, activation, params):
    """Forward and gradients of the later activations on one case (fp32/fp64: see test_linear_act's
    test_gradients_new_activations for bf16)."""
    require_backend(backend, device)
    leaves, out, args = run_case(CASES[1], dtype, device, activation, backend, requires_grad=True, params=params)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d(*leaves64, *args)
    assert_close_to_reference(out, out64, dtype)
    grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=4)
    grads = torch.autograd.grad(out, leaves, grad_out)
    for grad, grad64 in zip(grads, torch.autograd.grad(out64, leaves64, as64(grad_out))):
        assert_close_to_reference(grad, grad64, dtype)


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("activation", BASE_ACTIVATIONS),
    ("case", [CASES[1], CASES[2], CASES[5], CASES[8]], ["case1", "case2", "case5", "case8"]),
    ("channels_last", [False, True])))
def test_gradients(backend, device, dtype, activation, case, channels_last):
    require_backend(backend, device)
    leaves, out, args = run_case(
        case, dtype, device, activation, backend, channels_last=channels_last, requires_grad=True
    )
    grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=4)
    grads = torch.autograd.grad(out, leaves, grad_out)
    torch_grads = torch.autograd.grad(reference.conv2d(*leaves, *args), leaves, grad_out)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    grads64 = torch.autograd.grad(reference.conv2d(*leaves64, *args), leaves64, as64(grad_out))
    for grad, torch_grad, grad64 in zip(grads, torch_grads, grads64):
        assert_close_to_reference(grad, grad64, dtype, torch_grad)
    if case[0][1] > 1 and case[0][2] * case[0][3] > 1:  # with one channel or pixel the layouts are the same
        assert grads[0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("backend,activation,params",
                         [(b, a, None) for b in BACKENDS for a in BASE_ACTIVATIONS]
                         + [("native", *case.values) for case in NEW_ACTIVATION_CASES])
def test_gradcheck_float64(backend, activation, params):
    require_backend(backend, "cpu")
    x = make_input(2, 4, 5, 6, dtype=torch.float64).requires_grad_()
    weight = make_input(4, 2, 3, 2, dtype=torch.float64, seed=1).requires_grad_()
    bias = make_input(4, dtype=torch.float64, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: dlkernels.ops.conv2d(*a, stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                                        activation=activation, backend=backend, activation_params=params),
        # Under the Triton interpreter each of the ~600 perturbed forwards costs ~0.1 s: fast mode checks
        # random projections of the Jacobian instead (test_gradients compares every gradient in full).
        (x, weight, bias), fast_mode=backend == "triton")


@pytest.mark.parametrize("channels", [10, 20, 30])
def test_native_ten_row_gemm_kernel(channels):
    """10, 20, 30 output and input channels: the GEMMs of the forward, grad_x and grad_w have 10k rows, which
    take the 10-row AVX-512 micro-kernel (csrc/cpu/gemm.h, micro_kernel_for_rows) where the CPU has it; so does
    a linear layer over 10k rows."""
    require_backend("native", "cpu")
    case = ((3, channels, 9, 12), (channels, 3, 3), 1, 1, 1, 1)
    leaves, out, args = run_case(case, torch.float32, "cpu", "relu", "native", requires_grad=True)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d(*leaves64, *args)
    assert_close_to_reference(out, out64, torch.float32)
    grad_out = make_input(*out.shape, seed=4)
    for grad, grad64 in zip(torch.autograd.grad(out, leaves, grad_out),
                            torch.autograd.grad(out64, leaves64, as64(grad_out))):
        assert_close_to_reference(grad, grad64, torch.float32)
    x, w = make_input(channels, 37, seed=5), make_input(19, 37, seed=6)
    torch.testing.assert_close(dlkernels.ops.linear_act(x, w, None, "relu", backend="native"),
                               torch.relu(as64(x) @ as64(w).T).float())


# Shapes of real models that the CPU kernels treat apart: depthwise (the direct kernel), 1x1 (a plain GEMM;
# strided ones on the gathered pixels), strided convolutions (grad_x by phases or col2im), few input channels,
# batch 1 with a small image and many channels.
MODEL_CASES = [
    pytest.param(((2, 8, 9, 11), (8, 3, 3), 1, 1, 1, 8), id="dw3x3"),
    pytest.param(((1, 6, 12, 10), (12, 3, 3), 2, 1, 1, 6), id="dw3x3s2-mult2"),
    pytest.param(((2, 5, 13, 19), (5, 5, 5), 2, 2, 1, 5), id="dw5x5s2"),
    pytest.param(((1, 4, 9, 9), (4, 7, 7), 1, 3, 1, 4), id="dw7x7"),
    pytest.param(((1, 3, 11, 10), (3, 3, 3), (2, 1), (0, 2), (2, 1), 3), id="dw-dilated"),
    pytest.param(((1, 20, 37, 35), (20, 3, 3), 1, 1, 1, 20), id="dw-wide-rows"),
    # the rest of a row after its whole blocks as one block of 2 to 4 vectors (27 columns, 4 + 2 rows)
    pytest.param(((1, 8, 6, 27), (8, 3, 3), 1, 1, 1, 8), id="dw3x3-row-rest"),
    # stride 2: rows split into the two phases 2 vectors at a time, the last chunk partial, padding odd and even
    pytest.param(((2, 16, 9, 37), (16, 3, 3), 2, 1, 1, 16), id="dw3x3s2-wide"),
    pytest.param(((1, 8, 11, 40), (8, 5, 5), 2, 2, 1, 8), id="dw5x5s2-wide"),
    # Depthwise with output rows of at most 8 (or under 16 with 7-wide kernels), which the CPU computes
    # channels-last (64-channel blocks, the last partial; 4- and 1-pixel runs of a row; padding taps skipped;
    # strides and dilations).
    pytest.param(((3, 40, 7, 7), (40, 7, 7), 1, 3, 1, 40), id="dw7x7-small-plane"),
    pytest.param(((2, 70, 4, 4), (70, 5, 5), 1, 2, 1, 70), id="dw5x5-4x4"),
    pytest.param(((2, 20, 8, 8), (20, 3, 3), 2, 1, 1, 20), id="dw3x3s2-small-plane"),
    pytest.param(((1, 16, 9, 7), (16, 3, 3), (1, 2), (0, 1), (2, 1), 16), id="dw-small-plane-dilated"),
    pytest.param(((2, 24, 8, 8), (24, 3, 3), 1, 1, 1, 24), id="dw3x3-8x8"),
    pytest.param(((2, 20, 12, 11), (20, 7, 7), 1, 3, 1, 20), id="dw7x7-12x11"),
    # Many channels (channels_last: the channels-last kernels on the tensors as they lie, channel blocks of
    # 48 and a partial last vector): convnext's 7x7 and a 3x3, the forward's ring of padded rows with the
    # sliding taps over blocks of 5 and 7 pixels, grad_x as the flipped forward, grad_w's padded buffer.
    pytest.param(((2, 96, 9, 10), (96, 7, 7), 1, 3, 1, 96), id="dw7x7-96ch"),
    pytest.param(((1, 140, 6, 21), (140, 3, 3), 1, 1, 1, 140), id="dw3x3-140ch"),
    pytest.param(((2, 1, 12, 12), (5, 3, 3), 1, 1, 1, 1), id="one-channel"),
    pytest.param(((1, 6, 11, 9), (4, 1, 1), 2, 0, 1, 1), id="1x1s2"),
    pytest.param(((2, 8, 7, 7), (12, 1, 1), 1, 0, 1, 2), id="1x1-groups"),
    pytest.param(((1, 40, 6, 6), (24, 1, 1), 1, 0, 1, 1), id="1x1-shrink"),
    # grad_w packs runs of whole images: the second slice of the GEMM's K (2 x 383) starts inside image 1
    pytest.param(((3, 20, 15, 17), (24, 1, 1), 1, 0, 1, 1), id="1x1-slices"),
    # the image packed row by row for all column panels of a block: 2 slices of K, 2 column blocks, the last
    # panel partial
    pytest.param(((2, 700, 9, 31), (20, 1, 1), 1, 0, 1, 1), id="1x1-blocks"),
    pytest.param(((1, 3, 23, 21), (8, 7, 7), 2, 3, 1, 1), id="stem7x7s2"),
    pytest.param(((2, 6, 9, 10), (4, 3, 3), 2, 1, 1, 2), id="3x3s2-groups"),
    pytest.param(((1, 4, 10, 10), (6, 2, 2), 2, 0, 1, 1), id="2x2s2"),
    pytest.param(((1, 3, 16, 16), (5, 4, 4), 4, 0, 1, 1), id="patchify4x4s4"),
    # patches that do not cover the image (channels_last: the linear layer over the patches reads the whole
    # ones; the last row and column get a zero grad_x), with a rectangular kernel
    pytest.param(((2, 20, 9, 11), (24, 2, 3), (2, 3), 0, 1, 1), id="patchify2x3-crop"),
    pytest.param(((1, 4, 9, 8), (4, 3, 3), 3, 1, 1, 1), id="3x3s3"),
    # Patchify kernels too wide for the few-channel kernel: the GEMM packs them from the phases of x.
    pytest.param(((2, 8, 12, 14), (40, 2, 2), 2, 0, 1, 1), id="patchify2x2-phases"),
    pytest.param(((1, 3, 16, 21), (40, 4, 4), 4, 0, 1, 1), id="patchify4x4-phases"),
    # Patches that tile the image exactly: its phases are the output planes, a pointwise conv over C * 16 (4x4) or
    # C * 4 (2x2) channels read in place. Rows of 136 and 140 columns: whole vectors of the phase split's permutes
    # and a partial last one (34 and 35 columns a phase).
    pytest.param(((2, 3, 8, 136), (40, 4, 4), 4, 0, 1, 1), id="patchify4x4-pointwise"),
    pytest.param(((1, 6, 6, 140), (36, 2, 2), 2, 0, 1, 1), id="patchify2x2-pointwise"),
    # ... and that pointwise conv on 4x4 planes, narrower than a column panel: the images side by side (folded).
    pytest.param(((3, 40, 8, 8), (36, 2, 2), 2, 0, 1, 1), id="patchify2x2-folded"),
    # Phases split at stride 2 and 4 for a padded kernel (not a patchify one), rows of 70 and 134 columns.
    pytest.param(((1, 8, 7, 70), (36, 3, 3), 2, 1, 1, 1), id="3x3s2-phases-wide"),
    pytest.param(((1, 4, 9, 134), (36, 5, 5), 4, 2, 1, 1), id="5x5s4-phases-wide"),
    # Strided convolutions too wide for the few-channel kernel: the GEMM packs them from the phases of x (the
    # rows and columns of each tap's phase that fall outside it are zeros).
    pytest.param(((2, 16, 13, 15), (40, 3, 3), 2, 1, 1, 1), id="3x3s2-phases"),
    pytest.param(((1, 8, 17, 16), (36, 5, 5), (2, 3), 2, (1, 2), 1), id="5x5-phases-dilated"),
    pytest.param(((1, 3, 23, 21), (64, 7, 7), 2, 3, 1, 1), id="stem7x7s2-64"),
    # The GEMM's image packed row by row for a block of columns: "same" padding (one run of the plane per row
    # of k, its columns outside the plane zeroed; 3 column blocks, the second starting inside an output row, 2
    # slices of k), dilated, and rows of another width than the output's (stride 2 along H, padding 2 along W).
    pytest.param(((1, 30, 20, 30), (40, 5, 5), 1, 2, 1, 1), id="5x5-blocks"),
    pytest.param(((1, 24, 11, 13), (40, 3, 3), 1, 2, 2, 1), id="3x3-dilated-same"),
    pytest.param(((2, 24, 9, 21), (40, 3, 3), (2, 1), (0, 2), 1, 1), id="3x3-s2x1-pad"),
    pytest.param(((1, 16, 7, 7), (24, 3, 3), 1, 1, 1, 1), id="batch1-7x7"),
    # 3x3 convolutions the CPU runs with Winograd F(2x2, 3x3) (grad_x too): odd and even sizes (partial
    # tiles), padding 0 to 2, output channels past a whole register panel, several tasks per image.
    pytest.param(((2, 24, 23, 35), (33, 3, 3), 1, 1, 1, 1), id="winograd-odd"),
    pytest.param(((2, 24, 30, 30), (32, 3, 3), 1, 0, 1, 1), id="winograd-pad0"),
    pytest.param(((2, 20, 27, 29), (24, 3, 3), 1, 2, 1, 1), id="winograd-pad2"),
    pytest.param(((1, 64, 46, 46), (20, 3, 3), 1, 1, 1, 1), id="winograd-blocks"),
    # Tasks whose tile rows run on from one image into the next, starting inside an image (5 x 4 tiles per
    # image; with AVX-512's 32-tile panels, 19 tile rows per task).
    pytest.param(((12, 80, 7, 9), (72, 3, 3), 1, 1, 1, 1), id="winograd-images"),
    # 7x7 and 8x8 outputs (a 4 x 4 tile grid), whose planes are transformed 16 tiles at once: padding 0 to 2,
    # output channels past a whole panel, with AVX-512's 32-tile panels two tasks of 16 and 4 tile rows.
    pytest.param(((5, 24, 7, 7), (20, 3, 3), 1, 1, 1, 1), id="winograd-planes7"),
    pytest.param(((4, 16, 10, 10), (24, 3, 3), 1, 0, 1, 1), id="winograd-planes8-pad0"),
    pytest.param(((6, 20, 5, 5), (16, 3, 3), 1, 2, 1, 1), id="winograd-planes7-pad2"),
    # grad_w in chunks of the batch's tile rows (42 rows of 64 tiles each here; chunks end inside an image).
    pytest.param(((2, 24, 130, 128), (24, 3, 3), 1, 1, 1, 1), id="winograd-chunks"),
    pytest.param(((6, 40, 1, 1), (10, 1, 1), 1, 0, 1, 1), id="1x1-images"),  # squeeze-and-excitation
    pytest.param(((3, 10, 1, 1), (33, 1, 1), 2, 0, 3, 1), id="1x1-images-s2"),
    # Batches of small planes with 1 MiB of weights or more, which the CPU's GEMM takes as one product over
    # the images side by side (its column panels straddle images): 7x7, strided (packed from the phases),
    # 1x1, grouped, 4x4.
    pytest.param(((3, 256, 7, 7), (130, 3, 3), 1, 1, 1, 1), id="batched-7x7"),
    pytest.param(((3, 256, 9, 9), (120, 3, 3), 2, 1, 1, 1), id="batched-3x3s2"),
    # grad_x of strided convolutions with 64 output channels or more, as a GEMM over blocks of images and col2im:
    # 2 images (3 MiB of columns each) and then 1.
    pytest.param(((3, 64, 71, 71), (64, 3, 3), 2, 1, 1, 1), id="col2im-image-blocks"),
    pytest.param(((3, 520, 4, 4), (520, 1, 1), 1, 0, 1, 1), id="batched-1x1"),
    # grad_x over small planes (at most 64 output pixels, 256 in the batch) with 192 KiB of weights or more as
    # cols^T = gz^T @ w (w read as it lies) and col2im: a pointwise conv of one image (63 pixels, 203 channels),
    # a strided 1x1 conv, 3x3 convs of one image and of a batch (rows of 5 pixels; stride 2; dilated, padding 2).
    # batched-7x7, batched-3x3s2 and batched-4x4 above take it too (batched-1x1 does not: 1x1 over a batch).
    pytest.param(((1, 203, 7, 9), (260, 1, 1), 1, 0, 1, 1), id="1x1-one-image-large-weight"),
    pytest.param(((1, 150, 9, 9), (400, 1, 1), 2, 0, 1, 1), id="1x1s2-one-image-large-weight"),
    pytest.param(((1, 96, 4, 5), (64, 3, 3), 1, 1, 1, 1), id="3x3-one-image-large-weight"),
    pytest.param(((3, 80, 7, 7), (72, 3, 3), 2, 1, 1, 1), id="3x3s2-batch-large-weight"),
    pytest.param(((2, 64, 6, 7), (100, 3, 3), 1, 2, 2, 1), id="3x3-dilated-batch-large-weight"),
    pytest.param(((2, 512, 5, 5), (256, 3, 3), 1, 1, 1, 2), id="batched-groups"),
    pytest.param(((5, 256, 4, 4), (128, 3, 3), 1, 1, 1, 1), id="batched-4x4"),
    # Groups of 8 or 16 channels (RegNet, ResNeXt), which the CPU computes directly, groups in blocks of 64
    # channels (the last partial): strides 1, 2 and 3 along W (the last not a compile-time constant), runs of
    # 16, 8, 4 and 1 pixels, 8 in and 16 out and the reverse, dilation, 1x1, grad_w's images in chunks.
    pytest.param(((2, 48, 13, 11), (48, 3, 3), 2, 1, 1, 6), id="grouped8-s2"),
    pytest.param(((2, 80, 9, 7), (80, 3, 3), 1, 1, 1, 10), id="grouped8-blocks"),
    pytest.param(((1, 32, 6, 29), (32, 3, 3), 1, 1, 1, 2), id="grouped16-wide-rows"),
    pytest.param(((2, 24, 9, 9), (48, 3, 3), 2, 1, 1, 3), id="grouped8-to-16"),
    pytest.param(((1, 48, 8, 7), (24, 3, 3), 1, 1, 1, 3), id="grouped16-to-8"),
    pytest.param(((1, 16, 11, 12), (16, 3, 3), (3, 2), (2, 1), (2, 1), 2), id="grouped-dilated"),
    pytest.param(((1, 16, 10, 13), (16, 5, 5), (1, 3), 2, 1, 2), id="grouped-sw3"),
    pytest.param(((2, 32, 5, 6), (32, 1, 1), 1, 0, 1, 4), id="grouped-1x1"),
    pytest.param(((3, 64, 14, 14), (64, 3, 3), 1, 1, 1, 8), id="grouped8-image-chunks"),  # grad_w: 2 + 1 images
]


def check_case_gradients(case, dtype, activation, channels_last, params=None):
    leaves, out, args = run_case(case, dtype, "cpu", activation, "native", channels_last=channels_last,
                                 requires_grad=True, params=params)
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d(*leaves64, *args)
    assert_close_to_reference(out, out64, dtype, reference.conv2d(*leaves, *args))
    grad_out = make_input(*out.shape, dtype=dtype, seed=4)
    grads = torch.autograd.grad(out, leaves, grad_out)
    torch_grads = torch.autograd.grad(reference.conv2d(*leaves, *args), leaves, grad_out)
    for grad, torch_grad, grad64 in zip(grads, torch_grads, torch.autograd.grad(out64, leaves64, as64(grad_out))):
        assert_close_to_reference(grad, grad64, dtype, torch_grad)
    if case[0][1] > 1 and case[0][2] * case[0][3] > 1:  # with one channel or pixel the layouts are the same
        assert grads[0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("activation,params", [pytest.param(a, None, id=a) for a in NEW_ACTIVATIONS]
                         + NEW_ACTIVATION_CASES[len(NEW_ACTIVATIONS):])
@pytest.mark.parametrize("case", [c for c in MODEL_CASES if c.id in ("dw3x3s2-mult2", "1x1s2", "stem7x7s2")])
def test_model_shapes_native_new_activations(case, activation, params):
    require_backend("native", "cpu")
    check_case_gradients(case, torch.float32, activation, False, params)


def test_model_shapes_gradcheck_float64():
    require_backend("native", "cpu")
    for (n, c, h, w), (k, kh, kw), stride, padding, groups in [
        ((2, 3, 7, 6), (6, 3, 3), 2, 1, 3),  # depthwise, multiplier 2
        ((1, 4, 7, 5), (3, 1, 1), 2, 0, 1),  # 1x1 strided
        ((1, 2, 9, 8), (3, 5, 5), 2, 2, 1),  # stem-like
        ((1, 16, 6, 5), (16, 3, 3), 2, 1, 2),  # groups of 8 channels
    ]:
        x = make_input(n, c, h, w, dtype=torch.float64).requires_grad_()
        weight = make_input(k, c // groups, kh, kw, dtype=torch.float64, seed=1).requires_grad_()
        bias = make_input(k, dtype=torch.float64, seed=2).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda *a: dlkernels.ops.conv2d(*a, stride=stride, padding=padding, groups=groups, activation="silu",
                                            backend="native"), (x, weight, bias))


# Few-channel convolutions (groups 1, kernels larger than 1x1, up to 16 outputs from 64 inputs or 32 from 16,
# counting a stride sw along W as sw times the inputs), which the CPU runs with the direct kernels of
# csrc/cpu/conv2d_cpu_small*: TinyVGG's layers, 1 to 40 channels, kernels 2, 3 and 5 (and 1x1, which stays a
# GEMM), padding 0 and 1, dilation 2, a row stride, widths that are not a multiple of the vector (and wider than
# two), output-channel tiles of 2 to 16 with the last one partial; strided stems (the W stride as phases of the
# columns, each phase's first and last image column different; MODEL_CASES' stem7x7s2, 2x2s2, patchify4x4s4
# and 3x3s3 run here too), and the grad_x of stride-1 convolutions whose transposed convolution is such a one;
# grad_w of up to 4 input channels by outputs (MODEL_CASES' stem7x7s2-64 too).
SMALL_CASES = [
    pytest.param(((2, 1, 28, 28), (10, 3, 3), 1, 1, 1, 1), id="tinyvgg-1to10"),
    pytest.param(((3, 10, 14, 14), (10, 3, 3), 1, 1, 1, 1), id="tinyvgg-10to10"),
    pytest.param(((1, 3, 13, 37), (16, 5, 5), 1, 2, 1, 1), id="3to16-5x5"),
    pytest.param(((2, 10, 9, 23), (16, 1, 1), 1, 0, 1, 1), id="10to16-1x1"),
    pytest.param(((1, 3, 12, 21), (10, 3, 3), 1, 0, 2, 1), id="dilated-valid"),
    pytest.param(((2, 16, 9, 11), (3, 3, 3), (2, 1), 1, 1, 1), id="row-stride"),
    pytest.param(((1, 16, 6, 40), (14, 3, 3), 1, 1, 1, 1), id="16to14-wide"),
    pytest.param(((2, 12, 8, 7), (2, 3, 3), 1, 1, 1, 1), id="two-outputs"),
    # One output channel (and grad_x of one input channel, the same kernel), stride 1 and 2.
    pytest.param(((2, 12, 8, 9), (1, 3, 3), 1, 1, 1, 1), id="one-output"),
    pytest.param(((1, 5, 11, 13), (1, 5, 5), 2, 2, 1, 1), id="one-output-s2"),
    pytest.param(((2, 8, 7, 9), (32, 3, 3), 1, 1, 1, 1), id="8to32"),
    pytest.param(((1, 40, 6, 19), (12, 2, 2), 1, 0, 1, 1), id="40to12-2x2"),
    pytest.param(((2, 3, 17, 19), (16, 3, 3), 2, 1, 1, 1), id="stem3x3s2"),
    pytest.param(((1, 3, 12, 22), (32, 3, 3), 2, 1, 1, 1), id="stem3x3s2-32"),
    pytest.param(((2, 5, 9, 15), (12, 3, 5), (1, 3), (1, 2), 1, 1), id="phases-sw3"),
    # Too many outputs for the kernel, but grad_x's transposed convolution (3 outputs from 40) runs on it.
    pytest.param(((2, 3, 13, 18), (40, 3, 3), 1, 1, 1, 1), id="3to40-grad-input"),
    # grad_w vectorised along the outputs (up to 4 inputs, outputs in whole vectors): one tile of taps partly
    # padding, dilation, 3 images; 25 taps in one tile of 28; a 7x7 stem's 147 taps in tiles of 12; 64 outputs
    # (several vectors) from one channel.
    pytest.param(((3, 2, 11, 13), (32, 3, 3), 1, 2, 2, 1), id="gw-by-outputs-dilated"),
    pytest.param(((2, 1, 10, 12), (16, 5, 5), 2, 2, 1, 1), id="gw-by-outputs-5x5s2"),
    pytest.param(((1, 1, 9, 8), (64, 3, 3), 1, 1, 1, 1), id="gw-by-outputs-64"),
]


@pytest.mark.parametrize("dtype", DTYPES["cpu"])
@pytest.mark.parametrize("activation", BASE_ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", MODEL_CASES + SMALL_CASES)
def test_model_shapes_native(case, channels_last, activation, dtype):
    require_backend("native", "cpu")
    check_case_gradients(case, dtype, activation, channels_last)


def test_small_channels_gradcheck_float64():
    require_backend("native", "cpu")
    x = make_input(2, 3, 6, 7, dtype=torch.float64).requires_grad_()
    weight = make_input(5, 3, 3, 3, dtype=torch.float64, seed=1).requires_grad_()
    bias = make_input(5, dtype=torch.float64, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: dlkernels.ops.conv2d(*a, padding=1, activation="gelu", backend="native"), (x, weight, bias))


# ---------------------------------------------------------------------------------------------------------
# The CUDA implicit GEMM (csrc/cuda/conv2d_kernels.cuh), each tile forced with DLKERNELS_CUDA_CONV_CONFIG: in
# the CUDA emulator on CPU tensors, and on the GPU when there is one.

CUDA_TARGETS = [pytest.param(("cuda_emu", "cpu"), id="emu")] + (
    [pytest.param(("native", "cuda"), id="gpu", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])
CONV_CONFIGS = ["direct", "large", "medium"]
IGEMM_CASES = [  # (N, C, H, W), (K, kH, kW), stride, padding, dilation, groups
    ((2, 16, 7, 9), (24, 3, 3), 1, 1, 1, 1),  # channels multiples of 8: 16-byte gathers for channels_last
    ((1, 6, 9, 7), (5, 3, 2), 2, (1, 0), (2, 1), 1),  # odd channels: element gathers, stride and dilation
    ((2, 32, 6, 5), (16, 1, 1), 1, 0, 1, 2),  # 1x1, two groups of 16 channels
    ((1, 12, 11, 10), (9, 3, 3), (2, 3), 2, 2, 3),  # groups of 4 channels, strides that skip positions
    ((1, 72, 5, 6), (40, 2, 2), 1, 1, 1, 1),  # a reduction of more than one k-tile, N past one 32-wide warp
]


def tf32_conv_bound(x64, w64, b64, args):
    """The error bound of a float32 conv whose operands are rounded to TF32 (unit roundoff 2^-11) and summed in
    float32: |x| (*) |w| + |b| times a few units of TF32's rounding."""
    mag = reference.conv2d(x64.abs(), w64.abs(), None if b64 is None else b64.abs(), *args[:4], "none", None)
    return 8 * 2.0**-11 * mag + 1e-6


def check_conv_result(out, expected64, dtype, torch_out, bound):
    if dtype == torch.float32:
        error = (out.detach().double() - expected64).abs()
        assert (error <= bound).all(), error.max()
    else:
        assert_close_to_reference(out, expected64, dtype, torch_out)


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("config", CONV_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", IGEMM_CASES)
def test_cuda_conv_configurations(target, config, dtype, channels_last, case, monkeypatch):
    """Forward (bias and silu in the epilogue) and the three gradients of each tile, both layouts; float32
    as TF32 (torch.backends.cudnn.allow_tf32)."""
    backend, device = target
    require_backend(backend, device)
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", config)
    with tf32_flags(cudnn=True):
        leaves, out, args = run_case(case, dtype, device, "silu", backend, channels_last=channels_last,
                                     requires_grad=True)
        grad_out = make_input(*out.shape, dtype=dtype, device=device, seed=4)
        grads = torch.autograd.grad(out, leaves, grad_out)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    leaves64 = [as64(t).requires_grad_() for t in leaves]
    out64 = reference.conv2d(*leaves64, *args)
    grads64 = torch.autograd.grad(out64, leaves64, as64(grad_out))
    leaves_t = [t.detach().cpu().requires_grad_() for t in leaves]
    torch_out = reference.conv2d(*leaves_t, *args)
    torch_grads = torch.autograd.grad(torch_out, leaves_t, grad_out.cpu())
    x64, w64, b64 = (t.detach() for t in leaves64)
    check_conv_result(out.cpu(), out64.detach(), dtype, torch_out.detach(), tf32_conv_bound(x64, w64, b64, args))
    # |gz| <= 1.1 |grad_out| (silu' lies in [-0.1, 1.1]).
    gz_mag = 1.1 * as64(grad_out).abs()
    stride, padding, dilation, groups = args[:4]
    grad_bounds = [
        8 * 2.0**-11 * torch.nn.grad.conv2d_input(x64.shape, w64.abs(), gz_mag, stride, padding, dilation,
                                                   groups) + 1e-5,
        8 * 2.0**-11 * torch.nn.grad.conv2d_weight(x64.abs(), w64.shape, gz_mag, stride, padding, dilation,
                                                    groups) + 1e-5,
        8 * 2.0**-11 * gz_mag.sum((0, 2, 3)) + 1e-5,
    ]
    for grad, torch_grad, grad64, bound in zip(grads, torch_grads, grads64, grad_bounds):
        check_conv_result(grad.cpu(), grad64, dtype, torch_grad, bound)


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("config", ["large", "medium"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", dlkernels.ACTIVATIONS)
def test_cuda_conv_epilogue_activations(target, config, channels_last, activation, monkeypatch):
    """Every activation fused in the implicit GEMM's epilogue, in both output layouts."""
    backend, device = target
    require_backend(backend, device)
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", config)
    case = IGEMM_CASES[0]
    (x, weight, bias), out, args = run_case(case, torch.bfloat16, device, activation, backend,
                                            channels_last=channels_last)
    expected = reference.conv2d(as64(x), as64(weight), as64(bias), *args)
    assert_close_to_reference(out.cpu(), expected, torch.bfloat16, reference.conv2d(x.cpu(), weight.cpu(),
                                                                                    bias.cpu(), *args))


def test_cuda_conv_emulated_main_loop_is_conflict_free(monkeypatch):
    """The emulator's counters for the channels_last implicit GEMMs (16-byte gathers along channels): ldmatrix
    and cp.async without shared-memory bank conflicts and global reads in full 32-byte sectors, for the
    forward, the transposed grad_input gather and the weight gradient's MN-major gathers."""
    require_backend("cuda_emu", "cpu")
    from dlkernels import cuda_emu

    for config in ("large", "medium"):
        monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", config)
        cuda_emu.reset_counters()
        x = make_input(2, 64, 6, 6, dtype=torch.bfloat16, seed=1).to(memory_format=torch.channels_last)
        weight = make_input(64, 64, 3, 3, dtype=torch.bfloat16, seed=2)
        x.requires_grad_()
        weight.requires_grad_()
        out = dlkernels.ops.conv2d(x, weight, None, padding=1, activation="none", backend="cuda_emu")
        torch.autograd.grad(out, (x, weight), make_input(*out.shape, dtype=torch.bfloat16, seed=3))
        # Named conv::conv2d_..._kernel<...> (the kernels' namespace).
        counters = {k: v for k, v in cuda_emu.counters().items() if k.split("<")[0].startswith("conv::conv2d_")}
        kinds = {k.split("<")[0].split("::")[-1] for k, c in counters.items() if c["mma"] > 0}
        assert kinds == {"conv2d_forward_kernel", "conv2d_grad_input_kernel", "conv2d_grad_weight_kernel"}, (
            config, sorted(counters))
        for name, c in counters.items():
            if c["mma"] == 0:
                continue
            assert c["ldmatrix"] > 0 and c["cp_async"] > 0, name
            assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], (config, name, c)
            assert c["cp_async_wavefronts"] == c["cp_async_ideal_wavefronts"], (config, name, c)
            # 64 channels: the 16-byte gathers of a tap's row fill whole 32-byte sectors. The weight gradient's
            # 128-wide B tile spans two taps, whose rows share pixels (im2col's reuse): a warp may read a sector
            # twice, but never a sector in part.
            if "grad_weight" in name:
                assert c["cp_async_global_sectors"] * 32 <= c["cp_async_global_bytes"], (config, name, c)
            else:
                assert c["cp_async_global_sectors"] * 32 == c["cp_async_global_bytes"], (config, name, c)


@pytest.mark.parametrize("value", ["huge", "large:2", "Direct"])
def test_cuda_conv_config_variable_is_checked_emulated(value, monkeypatch):
    require_backend("cuda_emu", "cpu")
    monkeypatch.setenv("DLKERNELS_CUDA_CONV_CONFIG", value)
    x, weight = make_input(1, 8, 5, 5, dtype=torch.bfloat16), make_input(8, 8, 3, 3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="DLKERNELS_CUDA_CONV_CONFIG"):
        dlkernels.ops.conv2d(x, weight, None, backend="cuda_emu")


@pytest.mark.parametrize("activation,params", [pytest.param(a, None, id=a) for a in BASE_ACTIVATIONS[2:]]
                         + NEW_ACTIVATION_CASES)
def test_cpu_epilogue_activation_same_bits_on_every_path(activation, params):
    """conv2d's CPU epilogues (pointwise GEMM, depthwise, channels-last depthwise) apply a float activation to
    runs of different lengths (GEMM tiles, planes, chunks of the output), whole vectors then a tail; an element's
    result must not depend on where it lies: convolutions that pass x through unchanged (an identity 1x1 weight; a
    depthwise 3x3 with 1 at its centre) on images of one value each (1 x 37 pixels, 3 channels; values from -120
    to 120) give the same bits at every pixel, channel and path, within rounding of the float64 reference."""
    require_backend("native", "cpu")
    values = torch.linspace(-120.0, 120.0, 601)
    x = values.reshape(-1, 1, 1, 1).expand(601, 3, 1, 37).contiguous()
    centre = torch.zeros(3, 1, 3, 3)
    centre[:, :, 1, 1] = 1.0
    kw = dict(activation=activation, activation_params=params, backend="native")
    runs = {
        "pointwise": dlkernels.ops.conv2d(x, torch.eye(3).reshape(3, 3, 1, 1), **kw),
        "depthwise": dlkernels.ops.conv2d(x, centre, padding=1, groups=3, **kw),
        "depthwise channels-last": dlkernels.ops.conv2d(x.to(memory_format=torch.channels_last), centre, padding=1,
                                                        groups=3, **kw),
    }
    first = runs["pointwise"][:, 0, 0, 0]
    expected64 = reference.linear_act(values.double().unsqueeze(1), torch.ones(1, 1, dtype=torch.float64), None,
                                      activation, params).squeeze(1)
    assert_close_to_reference(first, expected64, torch.float32)
    for name, out in runs.items():
        assert out.shape == (601, 3, 1, 37), name
        same = first.reshape(-1, 1, 1, 1).expand_as(out)
        assert torch.equal(out, same), f"{name}: an element's bits depend on its place"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("channels,size", [(40, (7, 9)), (700, (13, 13))], ids=["one-slice", "two-slices"])
def test_cpu_pointwise_image_read_in_place(dtype, channels, size):
    """A pointwise convolution with at most 128 output channels has its micro-kernel read the image in place (the
    full column panels; a last, partial one is packed), one with more packs it: the first 128 channels of a
    136-channel convolution equal, bit for bit, the 128-channel convolution with the same weights. Images of 63
    and 169 pixels end in a partial panel; 700 input channels take two K slices (the second adds to the first's
    sums); bias and activation run in the epilogue. Both within rounding of the float64 reference."""
    require_backend("native", "cpu")
    x = make_input(2, channels, *size, dtype=dtype, seed=1)
    weight = make_input(136, channels, 1, 1, dtype=dtype, seed=2)
    bias = make_input(136, dtype=dtype, seed=3)
    packed = dlkernels.ops.conv2d(x, weight, bias, activation="silu", backend="native")
    in_place = dlkernels.ops.conv2d(x, weight[:128], bias[:128], activation="silu", backend="native")
    assert torch.equal(in_place, packed[:, :128])
    expected = reference.conv2d(as64(x), as64(weight[:128]), as64(bias[:128]), 1, 0, 1, 1, "silu", None)
    assert_close_to_reference(in_place, expected, dtype)


@pytest.mark.parametrize("kernel", [1, 3])
def test_cpu_small_planes_batch_side_by_side(kernel):
    """Planes smaller than one GEMM column panel (4x4 under AVX-512's 32 columns) take one GEMM over the batch's
    images side by side (whatever the weights' size; 1x1 and 3x3 kernels), a single image its own GEMM: the batch
    equals its images one at a time, bit for bit, and the float64 reference within rounding."""
    require_backend("native", "cpu")
    x = make_input(5, 40, 4, 4, seed=1)
    weight = make_input(24, 40, kernel, kernel, seed=2)
    bias = make_input(24, seed=3)
    kw = dict(padding=kernel // 2, activation="relu", backend="native")
    batch = dlkernels.ops.conv2d(x, weight, bias, **kw)
    alone = torch.cat([dlkernels.ops.conv2d(x[i:i + 1], weight, bias, **kw) for i in range(5)])
    assert torch.equal(batch, alone)
    expected = reference.conv2d(as64(x), as64(weight), as64(bias), 1, kernel // 2, 1, 1, "relu", None)
    assert_close_to_reference(batch, expected, torch.float32)
