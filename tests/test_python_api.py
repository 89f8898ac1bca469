"""The C++ entry points of the native ops (csrc/python_api.cpp), which dlkernels.ops and the layers call instead
of torch.ops: they compute what the op computes through torch.ops, and leave every call they do not take (a
tensor subclass, a torch function mode, other argument types) to that general path."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import dlkernels
from dlkernels import _ext
from conftest import make_input, require_native


@pytest.fixture(autouse=True)
def native():
    require_native("cpu")


POOL_CALLS = [  # (x shape, kernel_size, stride, padding, dilation, ceil_mode)
    ((2, 3, 9, 8), 2, None, 0, 1, False),
    ((2, 3, 9, 8), (3, 2), [2, 1], [1, 0], (1, 2), True),
    ((2, 3, 9, 8), [3], (), 1, [1], False),
    ((3, 9, 8), 3, 2, 1, 1, True),  # unbatched
]


@pytest.mark.parametrize("call", POOL_CALLS)
@pytest.mark.parametrize("return_indices", [False, True])
def test_max_pool2d_entry_matches_torch(call, return_indices):
    shape, *args = call
    x = make_input(*shape)
    got = _ext._C.max_pool2d_functional(x, *args, return_indices)
    assert got is not NotImplemented
    expected = F.max_pool2d(x, *args, return_indices=return_indices)
    for g, e in zip(got, expected) if return_indices else [(got, expected)]:
        assert torch.equal(g, e)


@pytest.mark.parametrize("args", [
    (True, None, 0, 1, False, False),        # a bool is not an int
    (2.0, None, 0, 1, False, False),         # nor is a float
    ((2, 2, 2), None, 0, 1, False, False),   # three values
    (torch.tensor(2), None, 0, 1, False, False),
])
def test_max_pool2d_entry_declines_other_arguments(args):
    assert _ext._C.max_pool2d_functional(make_input(1, 2, 4, 4), *args) is NotImplemented
    with pytest.raises(TypeError):  # and the general path raises as before
        dlkernels.ops.max_pool2d(make_input(1, 2, 4, 4), *args[:5], return_indices=args[5])


def test_max_pool2d_entry_declines_flags_that_are_not_bools():
    x = make_input(1, 2, 5, 5)
    assert _ext._C.max_pool2d_functional(x, 2, None, 0, 1, 1, False) is NotImplemented
    expected = F.max_pool2d(x, 2, ceil_mode=True)
    assert torch.equal(dlkernels.ops.max_pool2d(x, 2, ceil_mode=1, backend="native"), expected)


def test_entries_raise_the_ops_errors():
    with pytest.raises(ValueError, match="'kernel_size'"):
        _ext._C.max_pool2d_functional(make_input(1, 2, 4, 4), 0, None, 0, 1, False, False)
    with pytest.raises(ValueError, match="must equal weight.shape"):
        _ext._C.linear_act(make_input(2, 3), make_input(4, 5), None, "relu", 0.0, 0.0)
    with pytest.raises(RuntimeError, match="unknown activation"):  # as through torch.ops (dlkernels.ops checks first)
        _ext._C.conv2d(make_input(1, 3, 5, 5), make_input(4, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 1, "nope",
                       0.0, 0.0)
    with pytest.raises(TypeError, match="floating point"):
        _ext._C.max_pool2d_functional(torch.ones(1, 2, 4, 4, dtype=torch.int32), 2, None, 0, 1, False, False)


def test_linear_and_conv_entries_match_the_ops():
    x, w, b = make_input(3, 5), make_input(4, 5, seed=1), make_input(4, seed=2)
    assert torch.equal(_ext._C.linear_act(x, w, b, "gelu", 0.0, 0.0),
                       torch.ops.dlkernels.linear_act(x, w, b, "gelu", 0.0, 0.0))
    x, w = make_input(2, 3, 6, 6), make_input(4, 3, 3, 3, seed=1)
    args = ([1, 1], (1, 1), 1, 1, "leaky_relu", 0.2, 0)  # pairs as lists, tuples or ints; an int for a float
    expected = torch.ops.dlkernels.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", 0.2, 0.0)
    assert torch.equal(_ext._C.conv2d(x, w, None, *args), expected)
    assert _ext._C.linear_act(x, w, None, "relu", 0.0, None) is NotImplemented


def test_entries_record_autograd():
    x = make_input(2, 3, 6, 6, dtype=torch.float64).requires_grad_()
    w = make_input(4, 3, 3, 3, dtype=torch.float64, seed=1).requires_grad_()
    y = _ext._C.conv2d(x, w, None, 1, 1, 1, 1, "tanh", 0.0, 0.0)
    y = _ext._C.max_pool2d_functional(y, 2, None, 0, 1, False, False)
    grads = torch.autograd.grad(y.sum(), [x, w])
    expected = torch.autograd.grad(F.max_pool2d(torch.tanh(F.conv2d(x, w, None, 1, 1)), 2).sum(), [x, w])
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def test_torch_function_mode_and_subclasses_take_the_general_path():
    x = make_input(1, 3, 6, 6)
    layer = dlkernels.nn.Conv2d(3, 4, 3, padding=1, activation="relu", backend="native")
    with _Recorder() as mode:
        assert _ext._C.max_pool2d_functional(x, 2, None, 0, 1, False, False) is NotImplemented
        dlkernels.ops.max_pool2d(x, 2, backend="native")
        layer(x)
    assert "dlkernels.max_pool2d.default" in mode.calls and "dlkernels.conv2d.default" in mode.calls

    class Sub(torch.Tensor):
        pass

    sub = x.as_subclass(Sub)
    assert _ext._C.max_pool2d_functional(sub, 2, None, 0, 1, False, False) is NotImplemented
    assert type(dlkernels.ops.max_pool2d(sub, 2, backend="native")) is Sub
    assert type(layer(sub)) is Sub
