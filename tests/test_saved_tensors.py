"""Autograd saves only what each op's backward reads (dlkernels.contract._save_inputs): an in-place op on the
output (or on an input the backward does not read) must not break training, as it does not with torch's own
composite, and must raise where the backward really reads the modified tensor."""
import pytest
import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import contract, reference
from conftest import BACKENDS, make_input, require_backend

OPS = {
    # op -> (our function, torch's composite, input shapes (x, weight, bias))
    "linear_act": (lambda x, w, b, act, backend: dlkernels.ops.linear_act(x, w, b, act, backend=backend),
                   lambda x, w, b, act: reference.linear_act(x, w, b, act),
                   ((3, 5), (4, 5), (4,))),
    "conv2d": (lambda x, w, b, act, backend: dlkernels.ops.conv2d(x, w, b, padding=1, activation=act, backend=backend),
               lambda x, w, b, act: reference.conv2d(x, w, b, padding=1, activation_name=act),
               ((2, 3, 5, 4), (4, 3, 3, 3), (4,))),
}


def _run(fn, leaves, act, modify):
    """Forward, an in-place op on the output (it requires grad, so autograd records it), backward. Returns the
    gradients, or the RuntimeError autograd raised."""
    out = fn(*leaves, act)
    if modify:
        out.mul_(2)
    try:
        return torch.autograd.grad(out.square().sum(), [t for t in leaves if t.requires_grad])
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e), e
        return e


@pytest.mark.parametrize("activation", dlkernels.ACTIVATIONS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_op_on_output(backend, op, activation):
    require_backend(backend, "cpu")
    ours, theirs, shapes = OPS[op]
    leaves = [make_input(*s, dtype=torch.float64, seed=i).requires_grad_() for i, s in enumerate(shapes)]
    ours_fn = lambda x, w, b, act: ours(x, w, b, act, backend)
    got = _run(ours_fn, leaves, activation, modify=True)
    expected = _run(theirs, leaves, activation, modify=True)
    if contract.grad_needs_output(activation):
        # The backward reads the output: autograd must notice that it changed.
        assert isinstance(got, RuntimeError), f"{activation}: backward read a modified output"
        return
    assert not isinstance(got, RuntimeError), f"{activation}: {got}"
    # Where torch's composite raises, it saved the output too (relu, sigmoid, tanh).
    assert not isinstance(expected, RuntimeError), f"{activation}: torch raised, we did not"
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unread_inputs_not_saved(backend, op):
    """A frozen weight: x is not saved (grad_weight is not asked for), so x may change in place after the op;
    grad_x (which reads the weight, not x) is still right, in x's layout."""
    require_backend(backend, "cpu")
    ours, theirs, shapes = OPS[op]
    x = make_input(*shapes[0], dtype=torch.float64)
    w, b = (make_input(*s, dtype=torch.float64, seed=i + 1) for i, s in enumerate(shapes[1:]))
    for activation in ("none", "tanh"):
        for layout in ([torch.contiguous_format, torch.channels_last] if op == "conv2d" else [None]):
            xin = x.clone(memory_format=layout or torch.preserve_format).requires_grad_()
            y = ours(xin, w, b, activation, backend)
            with torch.no_grad():
                xin.mul_(3)  # bumps xin's version: allowed, since nothing of the op's backward reads x
            (grad,) = torch.autograd.grad(y.sum(), [xin])
            x0 = x.clone().requires_grad_()
            (expected,) = torch.autograd.grad(theirs(x0, w, b, activation).sum(), [x0])
            torch.testing.assert_close(grad, expected)
            if layout is not None:
                assert grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_op_needs_out_only_where_read(backend):
    require_backend(backend, "cpu")
    ops = getattr(torch.ops, dlkernels.ops.NAMESPACES[backend])
    x, w, g = make_input(3, 5), make_input(4, 5, seed=1), make_input(3, 4, seed=2)
    mask = [True, True, False]
    gx, gw, _ = ops.linear_act_backward(g, x, w, None, None, "none", 0.0, 0.0, mask)
    torch.testing.assert_close(gx, g @ w)
    torch.testing.assert_close(gw, g.t() @ x)
    gx, _, _ = ops.linear_act_backward(g, x, w, None, None, "silu", 0.0, 0.0, mask)
    z = (x @ w.t()).requires_grad_()
    torch.testing.assert_close(gx, torch.autograd.grad(F.silu(z), z, g)[0] @ w)
    with pytest.raises((RuntimeError, ValueError), match="'out' must be given"):
        ops.linear_act_backward(g, x, w, None, None, "relu", 0.0, 0.0, mask)
    x4, w4 = make_input(1, 2, 5, 5), make_input(3, 2, 3, 3, seed=1)
    with pytest.raises((RuntimeError, ValueError), match="'out' must be given"):
        ops.conv2d_backward(make_input(1, 3, 3, 3), x4, w4, None, None, [1, 1], [0, 0], [1, 1], 1, "tanh", 0.0, 0.0,
                            mask)
