"""linear_act against the float64 reference: values, gradients, layouts, leading dims, empty inputs."""
import pytest
import torch

import dlkernels
from dlkernels import reference
from conftest import (BACKENDS, BASE_ACTIVATIONS, NEW_ACTIVATION_CASES, assert_close_to_reference,
                      device_dtype_params, device_params, make_input, require_backend)

SHAPES = [  # (leading dims of x, K, N)
    ((1,), 1, 1),
    ((3,), 17, 33),
    ((17,), 33, 3),
    ((33,), 127, 17),
    ((2, 3), 5, 7),
    ((2, 1, 4), 9, 1),
    ((4,), 70, 9),  # batch <= 4 (skinny kernels): vector tails along K and N
]


def reference64(x, weight, bias, activation, params=None):
    as64 = lambda t: None if t is None else t.detach().to("cpu", torch.float64)
    return reference.linear_act(as64(x), as64(weight), as64(bias), activation, params)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("activation", BASE_ACTIVATIONS)
@pytest.mark.parametrize("lead,K,N", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("activation", BASE_ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
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
