"""linear_act against the float64 reference: values, gradients, layouts, leading dims, empty inputs; and each
configuration of the CUDA GEMM (forced), in the CUDA emulator and on the GPU."""
import pytest
import torch

import dlkernels
from dlkernels import reference
from conftest import (BACKENDS, BASE_ACTIVATIONS, NEW_ACTIVATION_CASES, assert_close_to_reference, backend_matrix,
                      device_dtype_params, device_params, make_input, require_backend, tf32_flags)

SHAPES = [  # (leading dims of x, K, N)
    ((1,), 1, 1),
    ((3,), 17, 33),
    ((17,), 33, 3),
    ((33,), 127, 17),
    ((2, 3), 5, 7),
    ((2, 1, 4), 9, 1),
    ((4,), 70, 9),  # batch <= 4 (skinny kernels): vector tails along K and N
    ((7,), 70, 9),  # batch 5 to 8 forward on AVX2: the skinny dot kernels' two row blocks (4 + 3)
    ((1,), 16500, 3),  # rows of grad_x and grad_w longer than one task's run of strips (the last partial)
    ((8,), 1100, 20),  # grad_x of batch 8 on AVX2 in the axpy form: 2 row blocks, 3 runs, 3 slices of k
    ((700,), 300, 20),  # grad_w's B (x) packed row by row: 2 slices of k, 2 column blocks, the last panel partial
]


def reference64(x, weight, bias, activation, params=None):
    as64 = lambda t: None if t is None else t.detach().to("cpu", torch.float64)
    return reference.linear_act(as64(x), as64(weight), as64(bias), activation, params)


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("activation", BASE_ACTIVATIONS), ("lead,K,N", SHAPES)))
def test_forward(backend, device, dtype, activation, lead, K, N):
    require_backend(backend, device)
    x = make_input(*lead, K, dtype=dtype, device=device, seed=1)
    weight = make_input(N, K, dtype=dtype, device=device, seed=2)
    bias = make_input(N, dtype=dtype, device=device, seed=3)
    out = dlkernels.ops.linear_act(x, weight, bias, activation, backend=backend)
    torch_out = reference.linear_act(x, weight, bias, activation)
    assert_close_to_reference(out, reference64(x, weight, bias, activation), dtype, torch_out)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_and_noncontiguous(backend, device, activation):
    require_backend(backend, device)
    x = make_input(9, 20, device=device).t()  # (20, 9), non-contiguous
    weight = make_input(6, 18, device=device, seed=4)[:, ::2]  # (6, 9), strided
    assert not x.is_contiguous() and not weight.is_contiguous()
    out = dlkernels.ops.linear_act(x, weight, None, activation, backend=backend)
    assert_close_to_reference(out, reference64(x, weight, None, activation), torch.float32)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_zero_k(backend, device):
    require_backend(backend, device)
    weight = make_input(5, 4, device=device)
    bias = make_input(5, device=device)
    empty = dlkernels.ops.linear_act(torch.empty(0, 4, device=device), weight, bias, "relu", backend=backend)
    assert empty.shape == (0, 5)
    # K == 0: the product is empty, the output is act(bias) as with F.linear.
    x0, w0 = torch.empty(3, 0, device=device), torch.empty(5, 0, device=device)
    out = dlkernels.ops.linear_act(x0, w0, bias, "sigmoid", backend=backend)
    torch.testing.assert_close(out, torch.sigmoid(bias).expand(3, 5))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend, device):
    require_backend(backend, device)
    x = make_input(2, 3, device=device)
    x[0, 1] = float("nan")
    out = dlkernels.ops.linear_act(x, make_input(4, 3, device=device), None, "relu", backend=backend)
    assert out[0].isnan().all() and not out[1].isnan().any()


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("activation,params", NEW_ACTIVATION_CASES)
@pytest.mark.parametrize("lead,K,N", [SHAPES[1], SHAPES[6]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_new_activations(backend, device, dtype, activation, params, lead, K, N):
    require_backend(backend, device)
    x = make_input(*lead, K, dtype=dtype, device=device, seed=1) * 4  # pre-activations across every kink
    weight = make_input(N, K, dtype=dtype, device=device, seed=2)
    bias = make_input(N, dtype=dtype, device=device, seed=3)
    out = dlkernels.ops.linear_act(x, weight, bias, activation, backend=backend, activation_params=params)
    torch_out = reference.linear_act(x, weight, bias, activation, params)
    assert_close_to_reference(out, reference64(x, weight, bias, activation, params), dtype, torch_out)


@pytest.mark.parametrize("device,dtype", [(d, t) for d, t in device_dtype_params() if t != torch.bfloat16])
@pytest.mark.parametrize("activation,params", NEW_ACTIVATION_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_new_activations(backend, device, dtype, activation, params):
    """fp32/fp64 only: from a bf16 output the kinks of hardtanh/relu6/hardsigmoid move by a rounding, and the
    gradient of an element within that rounding of a kink is then another one than torch's."""
    require_backend(backend, device)
    x = make_input(2, 3, 19, dtype=dtype, device=device, seed=5).requires_grad_()
    weight = make_input(11, 19, dtype=dtype, device=device, seed=6).requires_grad_()
    bias = make_input(11, dtype=dtype, device=device, seed=7).requires_grad_()
    grad_out = make_input(2, 3, 11, dtype=dtype, device=device, seed=8)
    leaves = [x, weight, bias]
    out = dlkernels.ops.linear_act(x, weight, bias, activation, backend=backend, activation_params=params)
    grads = torch.autograd.grad(out, leaves, grad_out)
    leaves64 = [t.detach().to("cpu", torch.float64).requires_grad_() for t in leaves]
    grads64 = torch.autograd.grad(reference.linear_act(*leaves64, activation, params), leaves64,
                                  grad_out.to("cpu", torch.float64))
    for grad, grad64 in zip(grads, grads64):
        assert_close_to_reference(grad, grad64, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation,params", NEW_ACTIVATION_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_kinks_and_nan_match_torch(backend, dtype, activation, params):
    """Pre-activations exactly at the kinks (z = x through a 1 x 1 identity weight), infinities and NaN: the
    output and the derivative are torch's, bit for bit up to rounding."""
    require_backend(backend, "cpu")
    values = [-7.0, -6.0, -3.0, -2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 6.0, 7.0, 25.0, -25.0,
              float("inf"), float("-inf"), float("nan")]
    x = torch.tensor(values, dtype=dtype).unsqueeze(1).requires_grad_()
    weight = torch.ones(1, 1, dtype=dtype)
    out = dlkernels.ops.linear_act(x, weight, None, activation, backend=backend, activation_params=params)
    (grad,) = torch.autograd.grad(out, [x], torch.ones_like(out))
    expected = reference.linear_act(x, weight, None, activation, params)
    (expected_grad,) = torch.autograd.grad(expected, [x], torch.ones_like(expected))
    finite = torch.isfinite(x.detach()).squeeze(1)  # no kernel is asked to match torch's inf - inf
    torch.testing.assert_close(out, expected, equal_nan=True)
    torch.testing.assert_close(grad[finite | x.detach().isnan().squeeze(1)],
                               expected_grad[finite | x.detach().isnan().squeeze(1)], equal_nan=True)


@pytest.mark.parametrize(*backend_matrix(
    ("device,dtype", device_dtype_params()), ("activation", BASE_ACTIVATIONS), ("with_bias", [True, False])))
def test_gradients(backend, device, dtype, activation, with_bias):
    require_backend(backend, device)
    x = make_input(2, 3, 19, dtype=dtype, device=device, seed=5).requires_grad_()
    weight = make_input(11, 19, dtype=dtype, device=device, seed=6).requires_grad_()
    bias = make_input(11, dtype=dtype, device=device, seed=7).requires_grad_() if with_bias else None
    grad_out = make_input(2, 3, 11, dtype=dtype, device=device, seed=8)
    leaves = [t for t in (x, weight, bias) if t is not None]

    out = dlkernels.ops.linear_act(x, weight, bias, activation, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out)
    torch_grads = torch.autograd.grad(reference.linear_act(x, weight, bias, activation), leaves, grad_out)
    leaves64 = [t.detach().to("cpu", torch.float64).requires_grad_() for t in leaves]
    out64 = reference.linear_act(leaves64[0], leaves64[1], leaves64[2] if with_bias else None, activation)
    grads64 = torch.autograd.grad(out64, leaves64, grad_out.to("cpu", torch.float64))
    for grad, torch_grad, grad64 in zip(grads, torch_grads, grads64):
        assert_close_to_reference(grad, grad64, dtype, torch_grad)


def test_only_requested_gradients_are_computed():
    require_backend("native", "cpu")
    x = make_input(4, 3).requires_grad_()
    weight = make_input(2, 3)  # frozen
    bias = make_input(2)
    grad_x, grad_w, grad_b = torch.ops.dlkernels.linear_act_backward(
        torch.ones(4, 2), x.detach(), weight, bias, torch.ones(4, 2), "none", 0.0, 0.0, [True, False, False])
    assert grad_x is not None and grad_w is None and grad_b is None
    out = dlkernels.ops.linear_act(x, weight, bias, "tanh")
    (grad,) = torch.autograd.grad(out.sum(), [x])
    assert grad.shape == x.shape


@pytest.mark.parametrize("backend,activation,params",
                         [(b, a, None) for b in BACKENDS for a in BASE_ACTIVATIONS]
                         + [("native", *case.values) for case in NEW_ACTIVATION_CASES])
def test_gradcheck_float64(backend, activation, params):
    require_backend(backend, "cpu")
    x = make_input(3, 4, dtype=torch.float64, seed=9).requires_grad_()
    weight = make_input(5, 4, dtype=torch.float64, seed=10).requires_grad_()
    bias = make_input(5, dtype=torch.float64, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: dlkernels.ops.linear_act(*a, activation=activation, backend=backend, activation_params=params),
        (x, weight, bias))


def test_reference_backend_matches_torch():
    x, weight = make_input(3, 4), make_input(2, 4, seed=1)
    out = dlkernels.ops.linear_act(x, weight, None, "gelu", backend="reference")
    torch.testing.assert_close(out, torch.nn.functional.gelu(x @ weight.t()))


# ---------------------------------------------------------------------------------------------------------
# The CUDA GEMM configurations (csrc/cuda/linear_act_cuda.cu), each forced with DLKERNELS_CUDA_GEMM_CONFIG:
# in the CUDA emulator on CPU tensors, and on the GPU when there is one.

CUDA_TARGETS = [pytest.param(("cuda_emu", "cpu"), id="emu")] + (
    [pytest.param(("native", "cuda"), id="gpu", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])
GEMM_CONFIGS = ["cuda_core", "large", "medium", "medium:3", "small_m", "small_m:1"]
GEMM_SHAPES = [  # (leading dims of x, K, N): K and N multiples of 8 take the tensor cores, the others fall back
    ((1,), 8, 8),
    ((5,), 24, 40),
    ((33,), 72, 16),
    ((2, 65), 136, 24),
    ((17,), 13, 11),
    ((3,), 40, 9),
]
TENSOR_CORE_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def tf32_bound(x, weight, bias):
    """The error bound of a float32 GEMM whose operands are rounded to TF32 (10-bit mantissas, unit roundoff
    2^-11) and summed in float32: |x| . |W|^T times a few units of TF32's rounding (the backward's operand gz
    carries the TF32 error of the recomputed pre-activation too)."""
    mag = x.abs().double() @ weight.abs().double().t() + (0 if bias is None else bias.abs().double())
    return 8 * 2.0**-11 * mag + 1e-6


def check_gemm_result(out, expected64, dtype, torch_out, bound=None):
    if dtype == torch.float32 and bound is not None:
        assert ((out.double() - expected64).abs() <= bound).all(), (out.double() - expected64).abs().max()
    else:
        assert_close_to_reference(out, expected64, dtype, torch_out)


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("config", GEMM_CONFIGS)
@pytest.mark.parametrize("dtype", TENSOR_CORE_DTYPES, ids=str)
@pytest.mark.parametrize("lead,K,N", GEMM_SHAPES)
def test_cuda_gemm_configurations(target, config, dtype, lead, K, N, monkeypatch):
    backend, device = target
    require_backend(backend, device)
    monkeypatch.setenv("DLKERNELS_CUDA_GEMM_CONFIG", config)
    x = make_input(*lead, K, dtype=dtype, device=device, seed=1).requires_grad_()
    weight = make_input(N, K, dtype=dtype, device=device, seed=2).requires_grad_()
    bias = make_input(N, dtype=dtype, device=device, seed=3).requires_grad_()
    grad = make_input(*lead, N, dtype=dtype, device=device, seed=4)
    with tf32_flags(matmul=True):  # float32 takes the tensor cores as TF32
        out = dlkernels.ops.linear_act(x, weight, bias, "silu", backend=backend)
        out.backward(grad)
    x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight, bias))
    ref = reference.linear_act(x64, w64, b64, "silu")
    ref.backward(grad.cpu().double())
    xt, wt, bt = (t.detach().cpu().float().to(dtype).requires_grad_() for t in (x, weight, bias))
    torch_out = reference.linear_act(xt, wt, bt, "silu")
    torch_out.backward(grad.cpu())
    pre = x64.detach() @ w64.detach().t() + b64.detach()
    check_gemm_result(out.cpu(), ref.detach(), dtype, torch_out.detach(), tf32_bound(x64, w64, b64))
    # The gradients: grad_x = gz . W and grad_W = gz^T . x, with gz = grad * silu'(pre).
    gz = grad.cpu().double() * torch.sigmoid(pre) * (1 + pre * (1 - torch.sigmoid(pre)))
    check_gemm_result(x.grad.cpu(), x64.grad, dtype, xt.grad, tf32_bound(gz.reshape(-1, N), w64.t(), None)
                      .reshape(x64.shape))
    check_gemm_result(weight.grad.cpu(), w64.grad, dtype, wt.grad,
                      tf32_bound(gz.reshape(-1, N).t(), x64.reshape(-1, K).t(), None))
    check_gemm_result(bias.grad.cpu(), b64.grad, dtype, bt.grad,
                      8 * 2.0**-11 * (1 + gz.abs().sum(tuple(range(gz.dim() - 1)))))


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("config", ["large", "medium", "small_m"])
@pytest.mark.parametrize("activation", dlkernels.ACTIVATIONS)
def test_cuda_gemm_epilogue_activations(target, config, activation, monkeypatch):
    """Every activation in the fused epilogue (large, medium) and in the split-K reduce (small_m)."""
    backend, device = target
    require_backend(backend, device)
    monkeypatch.setenv("DLKERNELS_CUDA_GEMM_CONFIG", config)
    x = make_input(6, 32, dtype=torch.bfloat16, device=device, seed=5)
    weight = make_input(24, 32, dtype=torch.bfloat16, device=device, seed=6)
    bias = make_input(24, dtype=torch.bfloat16, device=device, seed=7)
    out = dlkernels.ops.linear_act(x, weight, bias, activation, backend=backend)
    assert_close_to_reference(out.cpu(), reference64(x.cpu(), weight.cpu(), bias.cpu(), activation), torch.bfloat16,
                              reference.linear_act(x.cpu(), weight.cpu(), bias.cpu(), activation))


def test_cuda_gemm_emulated_main_loops_are_conflict_free(monkeypatch):
    """The emulator's counters for the tensor-core kernels: ldmatrix and cp.async without bank conflicts, and
    global reads in full 32-byte sectors, in each of the three GEMMs' operand layouts."""
    require_backend("cuda_emu", "cpu")
    from dlkernels import cuda_emu

    for config in ("large", "medium", "small_m:2"):
        monkeypatch.setenv("DLKERNELS_CUDA_GEMM_CONFIG", config)
        cuda_emu.reset_counters()
        x = make_input(64, 128, dtype=torch.bfloat16, seed=1).requires_grad_()
        weight = make_input(128, 128, dtype=torch.bfloat16, seed=2).requires_grad_()
        dlkernels.ops.linear_act(x, weight, None, "none", backend="cuda_emu").sum().backward()
        counters = {k: v for k, v in cuda_emu.counters().items() if k.startswith("linear_act_")}
        kinds = {k.split("<")[0] for k in counters}
        expected = {"linear_act_forward_kernel", "linear_act_grad_input_kernel", "linear_act_grad_weight_kernel"}
        assert kinds == expected, (config, sorted(counters))
        for name, c in counters.items():
            assert c["mma"] > 0 and c["ldmatrix"] > 0 and c["cp_async"] > 0, name
            assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], (config, name, c)
            assert c["cp_async_wavefronts"] == c["cp_async_ideal_wavefronts"], (config, name, c)
            assert c["cp_async_global_sectors"] * 32 == c["cp_async_global_bytes"], (config, name, c)


@pytest.mark.parametrize("value", ["huge", "large:0", "medium:x"])
def test_cuda_gemm_config_variable_is_checked_emulated(value, monkeypatch):
    require_backend("cuda_emu", "cpu")
    monkeypatch.setenv("DLKERNELS_CUDA_GEMM_CONFIG", value)
    x, weight = make_input(4, 16, dtype=torch.bfloat16), make_input(8, 16, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="DLKERNELS_CUDA_GEMM_CONFIG"):
        dlkernels.ops.linear_act(x, weight, None, "none", backend="cuda_emu")


# Pre-activations from -120 to 120 (exp's underflow and overflow, erf's and tanh's saturation) and around 0.
WIDE_VALUES = torch.cat([torch.linspace(-120.0, 120.0, 2401), torch.tensor([-1e-30, 1e-30, -0.0, 0.0, 1e-3, -1e-3])])
EPILOGUE_ACTIVATION_CASES = [pytest.param(a, None, id=a) for a in BASE_ACTIVATIONS if a not in ("none", "relu")]
EPILOGUE_ACTIVATION_CASES += NEW_ACTIVATION_CASES
# linear_act's float activations that PyTorch's in-place op applies after the GEMM (linear_act_cpu.h); its
# vectorised loop and its scalar tail may round an element differently.
ATEN_APPLIED = ("sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "elu")


@pytest.mark.parametrize("activation,params", EPILOGUE_ACTIVATION_CASES)
def test_cpu_activation_over_a_wide_range(activation, params):
    """linear_act's float activations on the CPU on pre-activations from -120 to 120, against the float64
    reference; those of the GEMM epilogue (vector kernels where the CPU has them) give an element the same bits
    wherever it lies in a run: all 37 columns (whole vectors, then every position of a tail) hold the same
    pre-activation."""
    require_backend("native", "cpu")
    x = WIDE_VALUES.unsqueeze(1)
    weight = torch.ones(37, 1)
    out = dlkernels.ops.linear_act(x, weight, None, activation, backend="native", activation_params=params)
    expected64 = reference.linear_act(x.double(), weight.double(), None, activation, params)
    assert_close_to_reference(out, expected64, torch.float32)
    if activation not in ATEN_APPLIED:
        assert torch.equal(out, out[:, :1].expand_as(out)), "an element's result depends on its column"
