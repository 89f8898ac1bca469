"""A native forward with PyTorch's backward: the training choice "native+reference" of backend="auto".

auto times a training call forward and backward together. Where the native forward beats PyTorch's but the
native backward loses to it, neither whole backend is the fastest: this one runs the native kernel forward
(the activation fused, one pass) and the backward with the ops PyTorch's own autograd would run for the
reference composite (the activation's derivative from the saved output, then aten's convolution / matmul
backward), so its gradients are the reference's.

It exists for the activations whose derivative PyTorch computes from the output (`ACTIVATIONS`): the others
would need the pre-activation, i.e. a second forward. autograd.Function in Python costs some microseconds per
call; auto measures that too, so tiny calls keep a whole backend.

This module is a leaf: it imports torch and nothing from dlkernels; the native forward is passed in.
"""
import torch

aten = torch.ops.aten

# The activations with a derivative computed from the output, and that derivative (aten's backward ops: the
# ones autograd records for torch.relu, torch.sigmoid and torch.tanh).
_GRAD_FROM_OUTPUT = {
    "none": lambda grad, out: grad,
    "relu": lambda grad, out: aten.threshold_backward(grad, out, 0),
    "sigmoid": aten.sigmoid_backward,
    "tanh": aten.tanh_backward,
}
ACTIVATIONS = tuple(_GRAD_FROM_OUTPUT)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, forward, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta):
        out = forward(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)
        ctx.save_for_backward(x, weight, None if activation == "none" else out)
        ctx.args = (None if bias is None else list(bias.shape), stride, padding, dilation, groups, activation)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        bias_sizes, stride, padding, dilation, groups, activation = ctx.args
        gz = _GRAD_FROM_OUTPUT[activation](grad, out)
        mask = [ctx.needs_input_grad[1], ctx.needs_input_grad[2], ctx.needs_input_grad[3]]
        grad_x, grad_w, grad_b = aten.convolution_backward(gz, x, weight, bias_sizes, stride, padding, dilation,
                                                           False, [0, 0], groups, mask)
        return None, grad_x, grad_w, grad_b, None, None, None, None, None, None, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, forward, x, weight, bias, activation, alpha, beta):
        out = forward(x, weight, bias, activation, alpha, beta)
        ctx.save_for_backward(x, weight, None if activation == "none" else out)
        ctx.activation = activation
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        gz = _GRAD_FROM_OUTPUT[ctx.activation](grad, out)
        gz2 = gz.reshape(-1, gz.shape[-1])
        grad_x = gz2.mm(weight).reshape(x.shape) if ctx.needs_input_grad[1] else None
        grad_w = gz2.t().mm(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[2] else None
        grad_b = gz2.sum(0) if ctx.needs_input_grad[3] else None
        return None, grad_x, grad_w, grad_b, None, None, None


def conv2d(forward, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta):
    """forward(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta) (the native op's
    arguments, pairs normalised) differentiated with PyTorch's conv2d backward."""
    return _Conv2d.apply(forward, x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)


def linear_act(forward, x, weight, bias, activation, alpha, beta):
    """forward(x, weight, bias, activation, alpha, beta) differentiated with PyTorch's linear backward."""
    return _Linear.apply(forward, x, weight, bias, activation, alpha, beta)
