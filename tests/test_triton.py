"""Triton-specific tests: Triton against the native backend on the same inputs, the interpreter's bf16
upcast, availability and dtype errors, the split grad-weight reduction, and GPU-only checks (fp16/fp64,
TF32) that skip without a GPU. opcheck and torch.compile over the Triton custom ops are in the shared
test_opcheck.py and test_compile.py, parametrised over the namespaces.

Without a GPU the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1): shapes are
tiny on purpose.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import reference
from conftest import assert_close_to_reference, make_input, require_backend, tf32_flags

triton_ops = pytest.importorskip("dlkernels.triton_ops")
from dlkernels.triton_ops import _common  # noqa: E402
from dlkernels.triton_ops import conv2d as triton_conv2d  # noqa: E402
from dlkernels.triton_ops import linear_act as triton_linear  # noqa: E402

CPU_INTERPRETED = _common.INTERPRET
ON_GPU = torch.cuda.is_available() and not CPU_INTERPRETED
DEVICE = "cuda" if ON_GPU else "cpu"
cuda_only = pytest.mark.skipif(not ON_GPU, reason="needs a GPU (and TRITON_INTERPRET unset)")

# Triton vs native, same inputs: both accumulate in float32 (float64 for float64) and round once, so they
# agree to a few units in the last place of the output's magnitude.
AGREEMENT = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def assert_agree(actual, expected, dtype):
    """|actual - expected| <= a few ulps of max|expected|, elementwise."""
    assert actual.dtype == expected.dtype == dtype and actual.shape == expected.shape
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    torch.testing.assert_close(a, e, rtol=AGREEMENT[dtype], atol=4 * AGREEMENT[dtype] * scale, equal_nan=True)


def native_or_skip(device):
    if "native" not in dlkernels.available_backends()[device]["linear_act"]:
        pytest.skip(f"no native kernels for {device} in this build")


def grads_of(fn, leaves, grad_out_seed):
    out = fn(*leaves)
    grad_out = make_input(*out.shape, dtype=out.dtype, device=out.device, seed=grad_out_seed)
    return out, torch.autograd.grad(out, [t for t in leaves if t is not None and t.requires_grad], grad_out)


# ---------------------------------------------------------------------------------------------------------
# Triton against native


NATIVE_DTYPES = [torch.float32, torch.float64, torch.bfloat16] if DEVICE == "cpu" else [torch.float32, torch.float16,
                                                                                          torch.bfloat16]


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
@pytest.mark.parametrize("activation", ["relu", "gelu_tanh", "sigmoid"])
def test_linear_act_matches_native(dtype, activation):
    native_or_skip(DEVICE)
    leaves = [make_input(*s, dtype=dtype, device=DEVICE, seed=i).requires_grad_() for i, s in
              enumerate([(2, 19, 37), (40, 37), (40,)])]
    results = {b: grads_of(lambda *a: dlkernels.ops.linear_act(*a, activation, backend=b), leaves, 9)
               for b in ("native", "triton")}
    (out_t, grads_t), (out_n, grads_n) = results["triton"], results["native"]
    assert_agree(out_t, out_n, dtype)
    for gt, gn in zip(grads_t, grads_n):
        assert_agree(gt, gn, dtype)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_matches_native(dtype, channels_last):
    native_or_skip(DEVICE)
    x = make_input(2, 4, 9, 7, dtype=dtype, device=DEVICE, seed=1)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    leaves = [x.requires_grad_(), make_input(6, 2, 3, 3, dtype=dtype, device=DEVICE, seed=2).requires_grad_(),
              make_input(6, dtype=dtype, device=DEVICE, seed=3).requires_grad_()]
    conv = lambda b: lambda *a: dlkernels.ops.conv2d(*a, stride=(2, 1), padding=1, groups=2, activation="silu",
                                                     backend=b)
    out_t, grads_t = grads_of(conv("triton"), leaves, 4)
    out_n, grads_n = grads_of(conv("native"), leaves, 4)
    assert out_t.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_agree(out_t, out_n, dtype)
    for gt, gn in zip(grads_t, grads_n):
        assert_agree(gt, gn, dtype)


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_max_pool2d_matches_native(dtype):
    native_or_skip(DEVICE)
    x = make_input(2, 3, 11, 10, dtype=dtype, device=DEVICE).requires_grad_()
    args = (3, 2, 1, 1, True)
    out_t, idx_t = dlkernels.ops.max_pool2d(x, *args, return_indices=True, backend="triton")
    out_n, idx_n = dlkernels.ops.max_pool2d(x, *args, return_indices=True, backend="native")
    assert torch.equal(out_t, out_n) and torch.equal(idx_t, idx_n)
    grad_out = make_input(*out_t.shape, dtype=dtype, device=DEVICE, seed=1)
    (grad_t,) = torch.autograd.grad(out_t, x, grad_out)
    (grad_n,) = torch.autograd.grad(out_n, x, grad_out)
    assert_agree(grad_t, grad_n, dtype)


# ---------------------------------------------------------------------------------------------------------
# The interpreter's bfloat16 dot


@pytest.mark.skipif(not CPU_INTERPRETED, reason="about the Triton interpreter")
def test_interpreter_upcasts_bf16_dot():
    """The interpreter computes a bf16 tl.dot wrongly (numpy has no bfloat16): the kernels upcast bf16 dot
    operands to float32 when interpreting. Without it this product is off by orders of magnitude."""
    assert _common.UPCAST_BF16_DOT
    x = make_input(33, 40, dtype=torch.bfloat16, seed=1)
    w = make_input(17, 40, dtype=torch.bfloat16, seed=2)
    out = dlkernels.ops.linear_act(x, w, None, "none", backend="triton")
    # The inputs are exact in float64: the result is the exact product rounded to bf16, give or take one
    # unit in the last place (float32 accumulation may flip a rounding).
    rounded = (x.double() @ w.double().t()).to(torch.bfloat16)
    torch.testing.assert_close(out.double(), rounded.double(), rtol=2 ** -7, atol=1e-6)


@pytest.mark.skipif(not CPU_INTERPRETED, reason="about the Triton interpreter")
def test_interpreter_bf16_dot_is_still_broken():
    """Documents why the upcast exists; skips (saying the upcast may go) once Triton fixes the interpreter."""
    import triton
    import triton.language as tl

    @triton.jit
    def raw_dot(a_ptr, b_ptr, c_ptr):
        r = tl.arange(0, 16)
        a = tl.load(a_ptr + r[:, None] * 16 + r[None, :])
        b = tl.load(b_ptr + r[:, None] * 16 + r[None, :])
        tl.store(c_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, b))

    a, b = make_input(16, 16, dtype=torch.bfloat16), make_input(16, 16, dtype=torch.bfloat16, seed=1)
    c = torch.empty(16, 16)
    raw_dot[(1,)](a, b, c)
    if torch.allclose(c, a.float() @ b.float(), rtol=1e-2, atol=1e-2):
        pytest.skip("this Triton's interpreter computes bf16 dots correctly: UPCAST_BF16_DOT could be dropped")


# ---------------------------------------------------------------------------------------------------------
# Availability, dtypes, precision flags


def test_unavailable_reason():
    assert triton_ops.unavailable_reason(torch.device("meta")) is not None
    if CPU_INTERPRETED:
        assert triton_ops.unavailable_reason(torch.device("cpu")) is None
        assert "TRITON_INTERPRET" in triton_ops.unavailable_reason(torch.device("cuda"))
    else:
        assert "TRITON_INTERPRET=1" in triton_ops.unavailable_reason(torch.device("cpu"))
        assert (triton_ops.unavailable_reason(torch.device("cuda")) is None) == torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_interpreter_triton_says_how_to_enable_it():
    code = ("import torch, dlkernels\n"
            "print(dlkernels.available_backends()['cpu']['conv2d'])\n"
            "try:\n"
            "    dlkernels.ops.linear_act(torch.ones(2, 3), torch.ones(4, 3), backend='triton')\n"
            "except RuntimeError as e:\n"
            "    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "triton" not in result.stdout.splitlines()[0]
    assert "backend='triton' cannot run here" in result.stdout and "TRITON_INTERPRET=1" in result.stdout


def test_unsupported_dtype_is_named():
    require_backend("triton", DEVICE)
    x = torch.ones(2, 3, device=DEVICE).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        dlkernels.ops.linear_act(x, torch.ones(4, 3, device=DEVICE).to(x.dtype), backend="triton")


def test_dot_precision_follows_the_torch_flags():
    assert _common.dot_precision(torch.float32, True) == "tf32"
    assert _common.dot_precision(torch.float32, False) == "ieee"
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert _common.dot_precision(dtype, True) == "ieee"
    with tf32_flags(matmul=True, cudnn=False):
        assert triton_linear._allow_tf32() and not triton_conv2d._allow_tf32()
    with tf32_flags(matmul=False, cudnn=True):
        assert not triton_linear._allow_tf32() and triton_conv2d._allow_tf32()


# ---------------------------------------------------------------------------------------------------------
# Paths the shared suite does not reach


def test_conv_grad_weight_split_reduction(monkeypatch):
    """The grad-weight pixel reduction split in chunks (chosen on big GPU shapes only) sums to the same."""
    require_backend("triton", DEVICE)
    monkeypatch.setattr(triton_conv2d, "_split_p", lambda x, P, tiles: 3)
    leaves = [make_input(*s, dtype=torch.float64, device=DEVICE, seed=i).requires_grad_()
              for i, s in enumerate([(2, 4, 9, 8), (6, 2, 3, 3), (6,)])]
    args = ((2, 1), 1, 1, 2, "relu")
    _, grads = grads_of(lambda *a: dlkernels.ops.conv2d(*a, *args, backend="triton"), leaves, 5)
    _, expected = grads_of(lambda *a: reference.conv2d(*a, *args), leaves, 5)
    for grad, exp in zip(grads, expected):
        assert_close_to_reference(grad, exp, torch.float64)


def test_only_bias_gradient():
    """Frozen weight and input, trainable bias: the grad-weight kernels run their bias-only mode."""
    require_backend("triton", DEVICE)
    bias = make_input(5, device=DEVICE, seed=1).requires_grad_()
    x, w = make_input(3, 4, device=DEVICE), make_input(5, 4, device=DEVICE, seed=2)
    (grad,) = torch.autograd.grad(dlkernels.ops.linear_act(x, w, bias, "tanh", backend="triton").sum(), bias)
    (expected,) = torch.autograd.grad(reference.linear_act(x, w, bias, "tanh").sum(), bias)
    torch.testing.assert_close(grad, expected)
    xc, wc = make_input(1, 4, 6, 6, device=DEVICE), make_input(6, 2, 3, 3, device=DEVICE, seed=3)
    biasc = make_input(6, device=DEVICE, seed=4).requires_grad_()
    (grad,) = torch.autograd.grad(dlkernels.ops.conv2d(xc, wc, biasc, groups=2, activation="gelu",
                                                       backend="triton").sum(), biasc)
    (expected,) = torch.autograd.grad(reference.conv2d(xc, wc, biasc, 1, 0, 1, 2, "gelu").sum(), biasc)
    torch.testing.assert_close(grad, expected)


# ---------------------------------------------------------------------------------------------------------
# GPU only


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_gpu_dtypes_against_reference(dtype):
    """float16 (not in the CPU lists) and float64 (does this Triton compile fp64 tl.dot?) on the GPU."""
    x = make_input(37, 70, dtype=dtype, device="cuda", seed=1)
    w = make_input(45, 70, dtype=dtype, device="cuda", seed=2)
    out = dlkernels.ops.linear_act(x, w, None, "gelu", backend="triton")
    torch_out = reference.linear_act(x, w, None, "gelu")
    assert_close_to_reference(out, reference.linear_act(x.double().cpu(), w.double().cpu(), None, "gelu"), dtype,
                              torch_out)
    xc = make_input(2, 8, 12, 12, dtype=dtype, device="cuda", seed=3)
    wc = make_input(16, 8, 3, 3, dtype=dtype, device="cuda", seed=4)
    outc = dlkernels.ops.conv2d(xc, wc, None, padding=1, activation="relu", backend="triton")
    expected = reference.conv2d(xc.double().cpu(), wc.double().cpu(), None, 1, 1, 1, 1, "relu")
    assert_close_to_reference(outc, expected, dtype, reference.conv2d(xc, wc, None, 1, 1, 1, 1, "relu"))


@cuda_only
def test_gpu_tf32_is_used_when_allowed():
    """With TF32 allowed, fp32 results move by TF32's rounding (1e-3 relative), but stay close."""
    x = make_input(256, 512, device="cuda", seed=1)
    w = make_input(256, 512, device="cuda", seed=2)
    exact = dlkernels.ops.linear_act(x, w, backend="triton")
    with tf32_flags(matmul=True):
        tf32 = dlkernels.ops.linear_act(x, w, backend="triton")
    expected = x.double() @ w.double().t()
    torch.testing.assert_close(exact.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tf32.double(), expected, rtol=1e-2, atol=1e-1)
    assert not torch.equal(exact, tf32)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_larger_shapes(dtype):
    """Shapes that reach the big autotune configs and the split grad-weight reduction."""
    x = make_input(8, 64, 28, 28, dtype=dtype, device="cuda", seed=1).to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = make_input(64, 64, 3, 3, dtype=dtype, device="cuda", seed=2).mul_(0.1).requires_grad_()
    b = make_input(64, dtype=dtype, device="cuda", seed=3).requires_grad_()
    args = (1, 1, 1, 1, "relu")
    leaves = [x, w, b]
    _, grads = grads_of(lambda *a: dlkernels.ops.conv2d(*a, *args, backend="triton"), leaves, 4)
    _, torch_grads = grads_of(lambda *a: reference.conv2d(*a, *args), leaves, 4)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    _, grads64 = grads_of(lambda *a: reference.conv2d(*a, *args), leaves64, 4)
    for g, tg, g64 in zip(grads, torch_grads, grads64):
        assert_close_to_reference(g, g64, dtype, tg)
    xl = make_input(512, 1024, dtype=dtype, device="cuda", seed=5)
    wl = make_input(768, 1024, dtype=dtype, device="cuda", seed=6)
    out = dlkernels.ops.linear_act(xl, wl, None, "silu", backend="triton")
    assert_close_to_reference(out, reference.linear_act(xl.double(), wl.double(), None, "silu"), dtype,
                              reference.linear_act(xl, wl, None, "silu"))
    xp = make_input(16, 64, 56, 56, dtype=dtype, device="cuda", seed=7)
    for xx in (xp, xp.to(memory_format=torch.channels_last)):
        out, idx = dlkernels.ops.max_pool2d(xx, 3, 2, 1, return_indices=True, backend="triton")
        torch_out, torch_idx = F.max_pool2d(xx, 3, 2, 1, return_indices=True)
        assert torch.equal(out, torch_out) and torch.equal(idx, torch_idx)
