"""The contract of every dlkernels op, the same for every backend that implements it as custom ops.

A backend is a torch.library namespace whose ops have the schemas below: the C++/CUDA kernels (namespace
"dlkernels", schemas defined in csrc/registration.cpp), the Triton kernels ("dlkernels_triton", defined in
dlkernels/triton_ops) and any later one. It defines the ops and their implementations; `register(namespace)`
adds the rest, written once here for all of them:

- the shape formulas (the same as csrc/common/shapes.h) and the output layouts;
- the fake kernels (shapes for torch.compile);
- autograd: what the forward saves, which gradients the backward op is asked for, and the backward itself,
  which calls the namespace's backward ops (custom ops too, so torch.compile(fullgraph=True) traces forward
  and backward without a graph break). A namespace that registers its own Autograd kernels (the native one:
  csrc/autograd.cpp, the same rules in C++, no Python on the call path) gets only the fake kernels.

Rules every backend follows:
- A backward op returns None (an undefined tensor) for each gradient output_mask does not ask for, and for
  grad_bias when there is no bias; the fake kernels do the same.
- max_pool2d computes the indices in the forward whenever the backward will need them (pool_needs_indices),
  rather than finding them again in the backward; the indices take no gradient. (The native plain op does it
  in its C++ autograd kernel: when autograd records, it computes and saves the indices itself.)
- conv2d_maxpool (the fused Conv -> activation -> MaxPool block) returns the pooled output and, for the
  backward, the position of each output's maximum inside its pooling window (pool_index_dtype: int8 for
  windows of up to 128 elements), never the conv output; the index takes no gradient.

This module is a leaf: it imports torch and nothing from dlkernels.
"""
import torch
from torch._prims_common import suggest_memory_format

# The activations, in the order of their codes in csrc/common/activation.h and the Triton kernels.
ACTIVATIONS = ("none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "relu6", "hardtanh", "hardswish",
               "hardsigmoid", "leaky_relu", "elu", "mish")

# The activations that take parameters: torch's argument names and defaults (F.hardtanh, F.leaky_relu, F.elu),
# in the order they become the ops' (alpha, beta) arguments (activation_args). relu6 is hardtanh(0, 6).
ACTIVATION_PARAMS = {
    "hardtanh": {"min_val": -1.0, "max_val": 1.0},
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
}

# Where each activation's backward takes its derivative from (the same rule as grad_needs_output and
# grad_needs_preactivation in csrc/common/activation.h; the Triton kernels read these):
# - the forward output, for the activations whose derivative the output determines;
# - the pre-activation x @ W^T + b, recomputed by the backward, for those it does not (nothing is saved in
#   the forward for them);
# - nothing, for "none".
# leaky_relu and elu take it from the output because their parameter must be >= 0 (activation_args): with a
# negative slope (alpha) the output no longer tells the sign of the pre-activation.
GRAD_FROM_OUTPUT = ("relu", "sigmoid", "tanh", "relu6", "hardtanh", "hardsigmoid", "leaky_relu", "elu")
GRAD_FROM_PREACTIVATION = ("gelu", "gelu_tanh", "silu", "hardswish", "mish")


def activation_args(activation, activation_params=None, op="linear_act"):
    """The (alpha, beta) the custom ops take for `activation` with the public API's `activation_params` (a dict
    with torch's argument names, missing ones at torch's defaults): leaky_relu (negative_slope, 0), hardtanh
    (min_val, max_val), elu (alpha, 0), relu6 (0, 6), (0, 0) for the others. ValueError naming
    'activation_params' for unknown keys, parameters of an activation that takes none, and values the kernels
    do not support (a negative negative_slope or alpha, min_val > max_val)."""
    defaults = ACTIVATION_PARAMS.get(activation, {})
    given = {} if activation_params is None else activation_params
    if not isinstance(given, dict):
        raise TypeError(f"dlkernels.{op}: expected 'activation_params' to be a dict or None, got "
                        f"{type(given).__name__}")
    if given and not defaults:
        raise ValueError(f"dlkernels.{op}: activation {activation!r} takes no parameters, got "
                         f"activation_params={given!r}")
    unknown = sorted(set(given) - set(defaults), key=str)
    if unknown:
        raise ValueError(f"dlkernels.{op}: unknown key(s) {', '.join(map(repr, unknown))} in 'activation_params' "
                         f"for activation {activation!r}; expected {', '.join(map(repr, defaults))}")
    values = []
    for key, default in defaults.items():
        value = given.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"dlkernels.{op}: expected activation_params[{key!r}] to be a number, got {value!r}")
        values.append(float(value))
    if activation in ("leaky_relu", "elu") and values[0] < 0:
        name = next(iter(defaults))
        raise ValueError(f"dlkernels.{op}: activation_params[{name!r}] must be >= 0 for {activation!r} (the "
                         f"backward takes the derivative from the output), got {values[0]}")
    if activation == "hardtanh" and values[0] > values[1]:
        raise ValueError(f"dlkernels.{op}: activation_params: 'min_val' ({values[0]}) must not be greater than "
                         f"'max_val' ({values[1]})")
    if activation == "relu6":
        return 0.0, 6.0
    alpha, beta = values + [0.0] * (2 - len(values))
    return alpha, beta


def activation_params_of(activation, alpha, beta):
    """The inverse of activation_args: torch's keyword arguments for the activation (the reference's)."""
    return dict(zip(ACTIVATION_PARAMS.get(activation, {}), (alpha, beta)))


def grad_needs_output(activation):
    """Whether the backward reads the forward output (the backward ops' `out`, None otherwise)."""
    return activation in GRAD_FROM_OUTPUT


def grad_needs_preactivation(activation):
    """Whether the backward recomputes the pre-activation (and so reads x, weight and bias)."""
    return activation in GRAD_FROM_PREACTIVATION

# The public ops.
OPS = ("linear_act", "conv2d", "max_pool2d", "conv2d_maxpool")

# Every custom op of a backend, forward and backward, with its schema (as in csrc/registration.cpp).
# Backward ops: output_mask selects (grad_x, grad_weight, grad_bias); unselected results are None. `out` is the
# forward output, given only when the activation's derivative is read from it (grad_needs_output).
# alpha, beta: the activation's parameters (activation_args), ignored by the activations without any.
SCHEMAS = {
    "linear_act": "(Tensor x, Tensor weight, Tensor? bias, str activation, float alpha, float beta) -> Tensor",
    "linear_act_backward": "(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, str activation, "
                           "float alpha, float beta, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
    "conv2d": "(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
              "int groups, str activation, float alpha, float beta) -> Tensor",
    "conv2d_backward": "(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, int[2] stride, "
                       "int[2] padding, int[2] dilation, int groups, str activation, float alpha, float beta, "
                       "bool[3] output_mask) "
                       "-> (Tensor, Tensor, Tensor)",
    "max_pool2d": "(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
                  "bool ceil_mode) -> Tensor",
    "max_pool2d_with_indices": "(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
                               "bool ceil_mode) -> (Tensor, Tensor)",
    "max_pool2d_backward": "(Tensor grad_out, Tensor x, Tensor indices, int[2] kernel_size, int[2] stride, "
                           "int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor",
    # max_pool2d(act(conv2d(x))): (pooled output, window index); see conv2d_maxpool_output_shape and
    # pool_index_dtype. The pooling has no dilation (it is always 1).
    "conv2d_maxpool": "(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
                      "int groups, str activation, float alpha, float beta, int[2] pool_kernel_size, "
                      "int[2] pool_stride, int[2] pool_padding, bool pool_ceil_mode) -> (Tensor, Tensor)",
    # `out` is the pooled output (given when grad_needs_output), `index` the forward's window index.
    "conv2d_maxpool_backward": "(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, Tensor index, "
                               "int[2] stride, int[2] padding, int[2] dilation, int groups, str activation, "
                               "float alpha, float beta, int[2] pool_kernel_size, int[2] pool_stride, "
                               "int[2] pool_padding, bool pool_ceil_mode, bool[3] output_mask) "
                               "-> (Tensor, Tensor, Tensor)",
}
# The one list that opcheck and the build tests run over, so that no op is forgotten.
CUSTOM_OPS = tuple(SCHEMAS)


# ---------------------------------------------------------------------------------------------------------
# Shapes and layouts (the same formulas as csrc/common/shapes.h)


def conv_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # With ceil_mode the last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_output_shape(x, weight, stride, padding, dilation):
    """(N, OC, OH, OW) of conv2d on a 4-D x."""
    return (x.shape[0], weight.shape[0]) + tuple(
        conv_output_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2))


def pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode):
    """(N, C, OH, OW) of max_pool2d on a 4-D x."""
    return (x.shape[0], x.shape[1]) + tuple(
        pool_output_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
        for i in range(2))


def conv2d_maxpool_output_shape(x, weight, stride, padding, dilation, pool_kernel_size, pool_stride, pool_padding,
                                ceil_mode):
    """(N, OC, PH, PW) of conv2d_maxpool: the pooled shape of the conv output (pool dilation 1)."""
    conv = conv_output_shape(x, weight, stride, padding, dilation)
    return conv[:2] + tuple(
        pool_output_size(conv[2 + i], pool_kernel_size[i], pool_stride[i], pool_padding[i], 1, ceil_mode)
        for i in range(2))


def pool_index_dtype(pool_kernel_size):
    """The dtype of conv2d_maxpool's window index (the same rule as csrc/common/shapes.h): int8 when every
    position of the window fits (at most 128 of them), int32 otherwise. The index of the output at pooled
    (ph, pw) is (h - h0) * pool_kernel_size[1] + (w - w0) for the conv output position (h, w) of its maximum,
    with (h0, w0) = (ph * stride - padding, pw * stride - padding) the window's corner (padding included)."""
    return torch.int8 if pool_kernel_size[0] * pool_kernel_size[1] <= 128 else torch.int32


def empty_like_format(shape, like, dtype=None):
    """An empty tensor of `shape` in the memory format of `like` (NCHW or channels_last): conv2d and
    max_pool2d results, and the gradients of their inputs, follow the layout of the input."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=suggest_memory_format(like))


def pool_needs_indices(x, return_indices):
    """Whether max_pool2d must compute the indices: asked for, or needed by the backward (then they are
    computed in the forward rather than found again in the backward)."""
    return return_indices or (torch.is_grad_enabled() and x.requires_grad)


# ---------------------------------------------------------------------------------------------------------
# Fake kernels


def _check_devices(op, x, weight, bias):
    """The device check of the C++ ops, in the fake kernels: a tensor on the meta device among real ones sends
    the call to the fake kernel, which must reject it as the real kernel would."""
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"dlkernels.{op}: expected '{name}' on {x.device} like 'x', got {t.device}")


def _linear_act_fake(x, weight, bias, activation, alpha, beta):
    _check_devices("linear_act", x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear_act_backward_fake(grad_out, x, weight, bias, out, activation, alpha, beta, output_mask):
    return (
        x.new_empty(x.shape) if output_mask[0] else None,
        weight.new_empty(weight.shape) if output_mask[1] else None,
        weight.new_empty((weight.shape[0],)) if output_mask[2] and bias is not None else None,
    )


def _conv2d_fake(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta):
    _check_devices("conv2d", x, weight, bias)
    return empty_like_format(conv_output_shape(x, weight, stride, padding, dilation), x)


def _conv2d_backward_fake(grad_out, x, weight, bias, out, stride, padding, dilation, groups, activation, alpha, beta,
                          output_mask):
    return (
        empty_like_format(x.shape, x) if output_mask[0] else None,
        weight.new_empty(weight.shape) if output_mask[1] else None,
        weight.new_empty((weight.shape[0],)) if output_mask[2] and bias is not None else None,
    )


def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    return empty_like_format(pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode), x)


def _max_pool2d_with_indices_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    return empty_like_format(shape, x), empty_like_format(shape, x, torch.int64)


def _max_pool2d_backward_fake(grad_out, x, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return empty_like_format(x.shape, x)


def _conv2d_maxpool_fake(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                         pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode):
    _check_devices("conv2d_maxpool", x, weight, bias)
    shape = conv2d_maxpool_output_shape(x, weight, stride, padding, dilation, pool_kernel_size, pool_stride,
                                        pool_padding, pool_ceil_mode)
    return empty_like_format(shape, x), empty_like_format(shape, x, pool_index_dtype(pool_kernel_size))


def _conv2d_maxpool_backward_fake(grad_out, x, weight, bias, out, index, stride, padding, dilation, groups, activation,
                                  alpha, beta, pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode,
                                  output_mask):
    return _conv2d_backward_fake(grad_out, x, weight, bias, out, stride, padding, dilation, groups, activation, alpha,
                                 beta, output_mask)


FAKE_KERNELS = {
    "linear_act": _linear_act_fake,
    "linear_act_backward": _linear_act_backward_fake,
    "conv2d": _conv2d_fake,
    "conv2d_backward": _conv2d_backward_fake,
    "max_pool2d": _max_pool2d_fake,
    "max_pool2d_with_indices": _max_pool2d_with_indices_fake,
    "max_pool2d_backward": _max_pool2d_backward_fake,
    "conv2d_maxpool": _conv2d_maxpool_fake,
    "conv2d_maxpool_backward": _conv2d_maxpool_backward_fake,
}


# ---------------------------------------------------------------------------------------------------------
# Autograd: what each forward saves (one place for all backends) and which gradients are asked for


def _save_inputs(ctx, x, weight, bias, output, activation, extra=()):
    """Saves exactly what the backward reads, so that an in-place op on anything else (the output above all:
    `x += y`, nn.Hardswish(inplace=True) after the layer) does not break training:
    - the output only for the activations whose derivative is taken from it (grad_needs_output);
    - x when grad_weight is asked for or the pre-activation is recomputed;
    - weight when grad_x is asked for or the pre-activation is recomputed;
    - bias only when the pre-activation is recomputed.
    For an input not saved only its metadata is kept: the backward ops check shapes (and grad_x takes x's
    shape), so they get a one-element stand-in expanded to that shape (_stand_in), whose values they never
    read."""
    recompute = grad_needs_preactivation(activation)
    needed = (ctx.needs_input_grad[1] or recompute, ctx.needs_input_grad[0] or recompute, recompute)
    inputs = (x, weight, bias)
    ctx.input_meta = tuple(None if t is None or need else (tuple(t.shape), t.dtype, t.device)
                           for t, need in zip(inputs, needed))
    out = output if grad_needs_output(activation) else None
    ctx.save_for_backward(*(t if need else None for t, need in zip(inputs, needed)), out, *extra)


def _stand_in(shape, dtype, device):
    """A tensor of this shape, dtype and device that holds one element (expanded): for an input the backward
    op checks but does not read."""
    return torch.empty((1,) * len(shape), dtype=dtype, device=device).expand(shape)


def _saved_inputs(ctx):
    """(x, weight, bias, out) for the backward op: the saved tensors, stand-ins for the inputs not saved (and
    after them the `extra` ones _save_inputs saved)."""
    inputs, out, extra = ctx.saved_tensors[:3], ctx.saved_tensors[3], ctx.saved_tensors[4:]
    inputs = [t if meta is None else _stand_in(*meta) for t, meta in zip(inputs, ctx.input_meta)]
    return (*inputs, out, *extra)


def _linear_act_setup(ctx, inputs, output):
    x, weight, bias, activation, alpha, beta = inputs
    ctx.act_args = (activation, alpha, beta)
    _save_inputs(ctx, x, weight, bias, output, activation)


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta = inputs
    ctx.conv_args = (stride, padding, dilation, groups, activation, alpha, beta)
    # grad_x follows x's layout; a stand-in for x (x not saved) has none, so the backward restores it.
    ctx.x_format = suggest_memory_format(x)
    _save_inputs(ctx, x, weight, bias, output, activation)


def _max_pool2d_setup(ctx, inputs, output):
    x, *pool_args = inputs
    ctx.pool_args = pool_args
    # The indices take no gradient: without this autograd would allocate a zero tensor the size of the
    # indices for every backward.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, output[1] if isinstance(output, (tuple, list)) else None)


def _conv2d_maxpool_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta, *pool_args = inputs
    out, index = output
    ctx.block_args = (stride, padding, dilation, groups, activation, alpha, beta, *pool_args)
    ctx.x_format = suggest_memory_format(x)
    ctx.set_materialize_grads(False)  # the index takes no gradient (see _max_pool2d_setup)
    _save_inputs(ctx, x, weight, bias, out, activation, extra=(index,))


def _output_mask(ctx, bias):
    """(grad_x, grad_weight, grad_bias) asked for: the backward ops compute only these, None for the rest."""
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]


def has_autograd_kernel(namespace, op):
    """Whether an Autograd kernel is registered for <namespace>::<op>: the native ops' own (csrc/autograd.cpp).
    (torch.library.custom_op ops, the Triton ones, always have one: it runs what register_autograd adds.)"""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{op}", "Autograd")


def register(namespace, autograd=True):
    """Registers the fake kernels and, with `autograd`, the autograd of every op in CUSTOM_OPS for the custom
    ops torch.ops.<namespace>.<op>, which the backend has defined (with SCHEMAS) before. Call once per
    namespace. autograd=False for a backend that registers its own Autograd kernels (the native one)."""
    ops = getattr(torch.ops, namespace)

    for op in CUSTOM_OPS:
        torch.library.register_fake(f"{namespace}::{op}", FAKE_KERNELS[op])

    def linear_act_backward(ctx, grad_out):
        x, weight, bias, out = _saved_inputs(ctx)
        grads = ops.linear_act_backward(grad_out, x, weight, bias, out, *ctx.act_args, _output_mask(ctx, bias))
        return (*grads, None, None, None)

    def conv2d_backward(ctx, grad_out):
        x, weight, bias, out = _saved_inputs(ctx)
        grad_x, grad_w, grad_b = ops.conv2d_backward(grad_out, x, weight, bias, out, *ctx.conv_args,
                                                     _output_mask(ctx, bias))
        if grad_x is not None:
            grad_x = grad_x.contiguous(memory_format=ctx.x_format)  # no copy when it already is
        return (grad_x, grad_w, grad_b) + (None,) * 7

    def max_pool2d_backward(ctx, grad_out, *unused_grad_indices):
        if grad_out is None:  # not materialised (see _max_pool2d_setup): no gradient flows back
            return (None,) * (1 + len(ctx.pool_args))
        x, indices = ctx.saved_tensors
        if indices is None:  # the plain op keeps no indices: find them again
            indices = ops.max_pool2d_with_indices(x, *ctx.pool_args)[1]
        grad_x = ops.max_pool2d_backward(grad_out, x, indices, *ctx.pool_args)
        return (grad_x,) + (None,) * len(ctx.pool_args)

    def conv2d_maxpool_backward(ctx, grad_out, *unused_grad_index):
        if grad_out is None:  # not materialised (see _conv2d_maxpool_setup): no gradient flows back
            return (None,) * 14
        x, weight, bias, out, index = _saved_inputs(ctx)
        grad_x, grad_w, grad_b = ops.conv2d_maxpool_backward(grad_out, x, weight, bias, out, index, *ctx.block_args,
                                                             _output_mask(ctx, bias))
        if grad_x is not None:
            grad_x = grad_x.contiguous(memory_format=ctx.x_format)
        return (grad_x, grad_w, grad_b) + (None,) * 11

    for op, backward, setup in (
        ("linear_act", linear_act_backward, _linear_act_setup),
        ("conv2d", conv2d_backward, _conv2d_setup),
        ("max_pool2d", max_pool2d_backward, _max_pool2d_setup),
        ("max_pool2d_with_indices", max_pool2d_backward, _max_pool2d_setup),
        ("conv2d_maxpool", conv2d_maxpool_backward, _conv2d_maxpool_setup),
    ):
        if autograd:
            torch.library.register_autograd(f"{namespace}::{op}", backward, setup_context=setup)
