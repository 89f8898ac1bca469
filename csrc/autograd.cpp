// Autograd of the native ops, in C++ (TORCH_LIBRARY_IMPL(dlkernels, Autograd, m)): one kernel per forward op
// for every device. It calls the forward op below autograd and, in the backward, the backward op through the
// dispatcher (a registered custom op, so torch.compile traces forward and backward with no graph break).
//
// It saves exactly what dlkernels/contract.py's Python autograd (the Triton namespace's) saves, the same rule:
// - the output only for the activations whose derivative is taken from it (grad_needs_output);
// - x when grad_weight is asked for or the pre-activation is recomputed (grad_needs_preactivation);
// - weight when grad_x is asked for or the pre-activation is recomputed;
// - bias only when the pre-activation is recomputed.
// For an input not saved only its shape, dtype and device are kept: the backward op gets a one-element
// stand-in expanded to that shape, whose values it never reads. Gradients not asked for are undefined.
//
// Without anything to record (grad mode off, or no input requiring grad) the kernel goes straight to the
// device kernel: no autograd node, no parsing, nothing else on the path.
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "common/activation.h"

namespace dlkernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }

// Whether autograd has anything to record for these inputs.
template <typename... T>
bool recording(const T&... tensors) {
  return c10::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// ---------------------------------------------------------------------------------------------------------
// Saving the inputs (contract._save_inputs)

const char* const kMetaKeys[3][3] = {{"x_sizes", "x_dtype", "x_device"},
                                     {"weight_sizes", "weight_dtype", "weight_device"},
                                     {"bias_sizes", "bias_dtype", "bias_device"}};

// Saves (x, weight, bias, out) as the backward reads them, then `extra` when given (saved_data()[4]); the
// metadata of the inputs not saved.
void save_inputs(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias, const at::Tensor& out, Activation act,
                 const at::Tensor& extra = at::Tensor()) {
  const bool recompute = grad_needs_preactivation(act);
  const bool with_bias = bias.has_value() && bias->defined();
  // Edges: 0 = x, 1 = weight, 2 = bias (when given).
  const std::array<bool, 3> needed{ctx->needs_input_grad(1) || recompute, ctx->needs_input_grad(0) || recompute,
                                   recompute};
  const std::array<at::Tensor, 3> inputs{x, weight, with_bias ? *bias : at::Tensor()};
  variable_list saved;
  saved.reserve(4);
  for (int i = 0; i < 3; ++i) {
    if (needed[i] || !inputs[i].defined()) {
      saved.push_back(needed[i] ? inputs[i] : at::Tensor());
      continue;
    }
    saved.emplace_back();
    ctx->saved_data[kMetaKeys[i][0]] = inputs[i].sym_sizes();
    ctx->saved_data[kMetaKeys[i][1]] = inputs[i].scalar_type();
    ctx->saved_data[kMetaKeys[i][2]] = inputs[i].device();
  }
  saved.push_back(grad_needs_output(act) ? out : at::Tensor());
  if (extra.defined()) saved.push_back(extra);
  ctx->save_for_backward(saved);
}

// A tensor of the saved shape, dtype and device holding one element, expanded (contract._stand_in).
at::Tensor stand_in(AutogradContext* ctx, int i) {
  const std::vector<c10::SymInt> sizes = ctx->saved_data[kMetaKeys[i][0]].toSymIntVector();
  const auto options = at::TensorOptions()
                           .dtype(ctx->saved_data[kMetaKeys[i][1]].toScalarType())
                           .device(ctx->saved_data[kMetaKeys[i][2]].toDevice());
  const std::vector<c10::SymInt> ones(sizes.size(), c10::SymInt(1));
  return at::empty_symint(ones, options).expand_symint(sizes);
}

// (x, weight, bias, out) for the backward op: the saved tensors, stand-ins for the inputs not saved.
std::array<at::Tensor, 4> saved_inputs(AutogradContext* ctx, bool with_bias) {
  const variable_list saved = ctx->get_saved_variables();
  std::array<at::Tensor, 4> result{saved[0], saved[1], saved[2], saved[3]};
  for (int i = 0; i < 3; ++i) {
    if (!result[i].defined() && (i < 2 || with_bias)) result[i] = stand_in(ctx, i);
  }
  return result;
}

std::optional<at::Tensor> optional_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// (grad_x, grad_weight, grad_bias) asked for (contract._output_mask).
std::array<bool, 3> output_mask(AutogradContext* ctx, bool with_bias) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1), with_bias && ctx->needs_input_grad(2)};
}

// ---------------------------------------------------------------------------------------------------------
// linear_act

using LinearActSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                c10::string_view, double, double);
using LinearActBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, c10::string_view, double, double, std::array<bool, 3>);

const c10::TypedOperatorHandle<LinearActSig>& linear_act_op() {
  static const auto op = op_handle<LinearActSig>("dlkernels::linear_act");
  return op;
}

class LinearActFunction : public torch::autograd::Function<LinearActFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view activation, double alpha,
                            double beta) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = linear_act_op().call(x, weight, bias, activation, alpha, beta);
    }
    const Activation act = parse_activation(activation);
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["with_bias"] = bias.has_value() && bias->defined();
    save_inputs(ctx, x, weight, bias, out, act);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto backward_op = op_handle<LinearActBackwardSig>("dlkernels::linear_act_backward");
    const bool with_bias = ctx->saved_data["with_bias"].toBool();
    const auto [x, weight, bias, out] = saved_inputs(ctx, with_bias);
    auto [grad_x, grad_w, grad_b] =
        backward_op.call(grad_outputs[0], x, weight, optional_tensor(bias), optional_tensor(out),
                         ctx->saved_data["activation"].toStringRef(), ctx->saved_data["alpha"].toDouble(),
                         ctx->saved_data["beta"].toDouble(), output_mask(ctx, with_bias));
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_act_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               c10::string_view activation, double alpha, double beta) {
  if (!recording(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return linear_act_op().call(x, weight, bias, activation, alpha, beta);
  }
  return LinearActFunction::apply(x, weight, bias, activation, alpha, beta);
}

// ---------------------------------------------------------------------------------------------------------
// conv2d

using Conv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::IntArrayRef,
                             c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view, double, double);
using Conv2dBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view,
    double, double, std::array<bool, 3>);

const c10::TypedOperatorHandle<Conv2dSig>& conv2d_op() {
  static const auto op = op_handle<Conv2dSig>("dlkernels::conv2d");
  return op;
}

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha,
                            double beta) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = conv2d_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta);
    }
    const Activation act = parse_activation(activation);
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["with_bias"] = bias.has_value() && bias->defined();
    // grad_x follows x's layout; a stand-in for x (x not saved) has none, so the backward restores it.
    ctx->saved_data["x_format"] = static_cast<int64_t>(x.suggest_memory_format());
    save_inputs(ctx, x, weight, bias, out, act);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto backward_op = op_handle<Conv2dBackwardSig>("dlkernels::conv2d_backward");
    const bool with_bias = ctx->saved_data["with_bias"].toBool();
    const auto [x, weight, bias, out] = saved_inputs(ctx, with_bias);
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    auto [grad_x, grad_w, grad_b] = backward_op.call(
        grad_outputs[0], x, weight, optional_tensor(bias), optional_tensor(out), stride, padding, dilation,
        ctx->saved_data["groups"].toInt(), ctx->saved_data["activation"].toStringRef(),
        ctx->saved_data["alpha"].toDouble(), ctx->saved_data["beta"].toDouble(), output_mask(ctx, with_bias));
    if (grad_x.defined()) {  // no copy when it already is in x's layout
      grad_x = grad_x.contiguous(static_cast<at::MemoryFormat>(ctx->saved_data["x_format"].toInt()));
    }
    variable_list grads{grad_x, grad_w, grad_b};
    grads.resize(10);  // no gradient for stride, padding, dilation, groups, activation, alpha, beta
    return grads;
  }
};

at::Tensor conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                           c10::string_view activation, double alpha, double beta) {
  if (!recording(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta);
  }
  return Conv2dFunction::apply(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta);
}

// ---------------------------------------------------------------------------------------------------------
// max_pool2d and max_pool2d_with_indices (contract._max_pool2d_setup): x and, for the second, the indices
// are saved; the plain op finds the indices again in the backward. The indices take no gradient.

using MaxPool2dSig = at::Tensor(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                                c10::IntArrayRef, bool);
using MaxPool2dWithIndicesSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef,
                                                                   c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                                                                   bool);
using MaxPool2dBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
                                        c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, bool);

const c10::TypedOperatorHandle<MaxPool2dSig>& max_pool2d_op() {
  static const auto op = op_handle<MaxPool2dSig>("dlkernels::max_pool2d");
  return op;
}
const c10::TypedOperatorHandle<MaxPool2dWithIndicesSig>& max_pool2d_with_indices_op() {
  static const auto op = op_handle<MaxPool2dWithIndicesSig>("dlkernels::max_pool2d_with_indices");
  return op;
}

void save_pool_args(AutogradContext* ctx, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                    c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
  ctx->saved_data["kernel_size"] = kernel_size.vec();
  ctx->saved_data["stride"] = stride.vec();
  ctx->saved_data["padding"] = padding.vec();
  ctx->saved_data["dilation"] = dilation.vec();
  ctx->saved_data["ceil_mode"] = ceil_mode;
  // Without this autograd would allocate a zero tensor the size of the indices for every backward.
  ctx->set_materialize_grads(false);
}

// The gradient of x (undefined when no gradient flows back), then one undefined per other argument.
variable_list pool_backward(AutogradContext* ctx, const at::Tensor& grad_out) {
  variable_list grads(6);
  if (!grad_out.defined()) return grads;
  static const auto backward_op = op_handle<MaxPool2dBackwardSig>("dlkernels::max_pool2d_backward");
  const variable_list saved = ctx->get_saved_variables();
  const at::Tensor& x = saved[0];
  const std::vector<int64_t> kernel_size = ctx->saved_data["kernel_size"].toIntVector();
  const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
  const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
  const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
  const bool ceil_mode = ctx->saved_data["ceil_mode"].toBool();
  at::Tensor indices = saved[1];
  if (!indices.defined()) {  // the plain op keeps no indices: find them again
    indices = std::get<1>(max_pool2d_with_indices_op().call(x, kernel_size, stride, padding, dilation, ceil_mode));
  }
  grads[0] = backward_op.call(grad_out, x, indices, kernel_size, stride, padding, dilation, ceil_mode);
  return grads;
}

class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::IntArrayRef kernel_size,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                            bool ceil_mode) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = max_pool2d_op().call(x, kernel_size, stride, padding, dilation, ceil_mode);
    }
    save_pool_args(ctx, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({x, at::Tensor()});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return pool_backward(ctx, grad_outputs[0]);
  }
};

class MaxPool2dWithIndicesFunction : public torch::autograd::Function<MaxPool2dWithIndicesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               bool ceil_mode) {
    at::Tensor out, indices;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, indices) = max_pool2d_with_indices_op().call(x, kernel_size, stride, padding, dilation, ceil_mode);
    }
    save_pool_args(ctx, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({x, indices});
    ctx->mark_non_differentiable({indices});
    return {out, indices};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return pool_backward(ctx, grad_outputs[0]);
  }
};

at::Tensor max_pool2d_autograd(const at::Tensor& x, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
  if (!recording(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return max_pool2d_op().call(x, kernel_size, stride, padding, dilation, ceil_mode);
  }
  return MaxPool2dFunction::apply(x, kernel_size, stride, padding, dilation, ceil_mode);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_autograd(const at::Tensor& x, c10::IntArrayRef kernel_size,
                                                                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                                    c10::IntArrayRef dilation, bool ceil_mode) {
  if (!recording(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return max_pool2d_with_indices_op().call(x, kernel_size, stride, padding, dilation, ceil_mode);
  }
  const variable_list result =
      MaxPool2dWithIndicesFunction::apply(x, kernel_size, stride, padding, dilation, ceil_mode);
  return {result[0], result[1]};
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_maxpool (contract._conv2d_maxpool_setup): the inputs and the pooled output by save_inputs' rule, and
// the window index, which takes no gradient.

using Conv2dMaxPoolSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                            const std::optional<at::Tensor>&, c10::IntArrayRef,
                                                            c10::IntArrayRef, c10::IntArrayRef, int64_t,
                                                            c10::string_view, double, double, c10::IntArrayRef,
                                                            c10::IntArrayRef, c10::IntArrayRef, bool);
using Conv2dMaxPoolBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
    c10::string_view, double, double, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, bool, std::array<bool, 3>);

const c10::TypedOperatorHandle<Conv2dMaxPoolSig>& conv2d_maxpool_op() {
  static const auto op = op_handle<Conv2dMaxPoolSig>("dlkernels::conv2d_maxpool");
  return op;
}

class Conv2dMaxPoolFunction : public torch::autograd::Function<Conv2dMaxPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha,
                               double beta, c10::IntArrayRef pool_kernel_size, c10::IntArrayRef pool_stride,
                               c10::IntArrayRef pool_padding, bool pool_ceil_mode) {
    at::Tensor out, index;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, index) =
          conv2d_maxpool_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                                   pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode);
    }
    const Activation act = parse_activation(activation);
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["pool_kernel_size"] = pool_kernel_size.vec();
    ctx->saved_data["pool_stride"] = pool_stride.vec();
    ctx->saved_data["pool_padding"] = pool_padding.vec();
    ctx->saved_data["pool_ceil_mode"] = pool_ceil_mode;
    ctx->saved_data["with_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["x_format"] = static_cast<int64_t>(x.suggest_memory_format());
    save_inputs(ctx, x, weight, bias, out, act, index);
    ctx->mark_non_differentiable({index});
    // Without this autograd would allocate a zero tensor the size of the index for every backward.
    ctx->set_materialize_grads(false);
    return {out, index};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list grads(14);  // no gradient for anything but x, weight and bias
    if (!grad_outputs[0].defined()) return grads;
    static const auto backward_op = op_handle<Conv2dMaxPoolBackwardSig>("dlkernels::conv2d_maxpool_backward");
    const bool with_bias = ctx->saved_data["with_bias"].toBool();
    const auto [x, weight, bias, out] = saved_inputs(ctx, with_bias);
    const at::Tensor index = ctx->get_saved_variables()[4];
    const auto ints = [ctx](const char* key) { return ctx->saved_data[key].toIntVector(); };
    auto [grad_x, grad_w, grad_b] =
        backward_op.call(grad_outputs[0], x, weight, optional_tensor(bias), optional_tensor(out), index, ints("stride"),
                         ints("padding"), ints("dilation"), ctx->saved_data["groups"].toInt(),
                         ctx->saved_data["activation"].toStringRef(), ctx->saved_data["alpha"].toDouble(),
                         ctx->saved_data["beta"].toDouble(), ints("pool_kernel_size"), ints("pool_stride"),
                         ints("pool_padding"), ctx->saved_data["pool_ceil_mode"].toBool(), output_mask(ctx, with_bias));
    if (grad_x.defined()) {  // no copy when it already is in x's layout
      grad_x = grad_x.contiguous(static_cast<at::MemoryFormat>(ctx->saved_data["x_format"].toInt()));
    }
    grads[0] = grad_x;
    grads[1] = grad_w;
    grads[2] = grad_b;
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> conv2d_maxpool_autograd(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha,
    double beta, c10::IntArrayRef pool_kernel_size, c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding,
    bool pool_ceil_mode) {
  if (!recording(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_maxpool_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                                    pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode);
  }
  const variable_list result =
      Conv2dMaxPoolFunction::apply(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                                   pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode);
  return {result[0], result[1]};
}

}  // namespace
}  // namespace dlkernels

TORCH_LIBRARY_IMPL(dlkernels, Autograd, m) {
  m.impl("linear_act", &dlkernels::linear_act_autograd);
  m.impl("conv2d", &dlkernels::conv2d_autograd);
  m.impl("max_pool2d", &dlkernels::max_pool2d_autograd);
  m.impl("max_pool2d_with_indices", &dlkernels::max_pool2d_with_indices_autograd);
  m.impl("conv2d_maxpool", &dlkernels::conv2d_maxpool_autograd);
}
