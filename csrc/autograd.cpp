// Autograd of the native ops, in C++ (TORCH_LIBRARY_IMPL(dlkernels, Autograd, m)): one kernel per forward op
// for every device. It calls the forward op below autograd and, in the backward, the backward op through the
// dispatcher (a registered custom op, so torch.compile traces forward and backward with no graph break).
//
// linear_act and conv2d save exactly what dlkernels/contract.py's Python autograd (the Triton namespace's)
// saves, the same rule:
// - the output only for the activations whose derivative is taken from it (grad_needs_output);
// - x when grad_weight is asked for or the pre-activation is recomputed (grad_needs_preactivation);
// - weight when grad_x is asked for or the pre-activation is recomputed;
// - bias only when the pre-activation is recomputed.
// For an input not saved only its shape, dtype and device are kept: the backward op gets a one-element
// stand-in expanded to that shape, whose values it never reads. Gradients not asked for are undefined.
// max_pool2d computes its indices in the forward whenever autograd records (see its section below).
//
// Without anything to record (grad mode off, or no input requiring grad) the kernel goes straight to the
// device kernel: no autograd node, no parsing, nothing else on the path.
#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include "common/activation.h"

namespace dlkernels {
namespace {

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

// Dispatch for a backward op called from a node's backward: below autograd unless the backward itself is
// being recorded (grad mode on: create_graph=True, or torch.compile tracing the joint graph). The backward
// ops have no Autograd kernel of their own, and the fallback torch runs for them there boxes every argument
// only to redispatch below autograd when grad mode is off.
struct BackwardDispatch {
  BackwardDispatch() {
    if (!c10::GradMode::is_enabled()) below_autograd.emplace();
  }
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
};

// Compiled autograd (torch._dynamo.config.compiled_autograd) takes a node as torch's own nodes give it: the
// constants that key its cache (compiled_args) and the backward as a function of (grads, packed arguments),
// which it puts in its graph (apply_with_saved). Each node below packs the arguments its backward op takes;
// the function (<Node>::functional) unpacks them in the same order and runs the same backward as apply().
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::PackedArgs;
using torch::dynamo::autograd::SwapSavedVariables;

template <typename T>
at::TypePtr packed_type() {
  return torch::dynamo::autograd::IValuePacker<T>::packed_type();
}

// Binds `functional` as compiled autograd's op `name` with the types of its packed arguments, once per process
// (its ops are global and reject a second binding of a name), and calls it on `grads`.
variable_list call_compiled(const torch::autograd::Node& node, const variable_list& grads, SwapSavedVariables& saved,
                            const PackedArgs& args, const std::vector<at::TypePtr>& schema,
                            variable_list (*functional)(const variable_list&, const std::vector<c10::IValue>&)) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::string> bound;  // node name -> compiled autograd op name
  const auto& compiler = torch::dynamo::autograd::getPyCompilerInterface();
  std::string op_name;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = bound.find(node.name());
    if (it == bound.end()) {
      it = bound
               .emplace(node.name(), compiler->bind_function(saved.get_py_compiler(), node.name(), functional, schema,
                                                             /*is_custom_function=*/false, /*is_traceable=*/true))
               .first;
    }
    op_name = it->second;
  }
  const auto output_metadata =
      torch::dynamo::autograd::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
          torch::dynamo::autograd::get_input_metadata(node.next_edges()));
  return compiler->call_function(saved.get_py_compiler(), "apply_functional", op_name, grads, args.vec(),
                                 output_metadata);
}

// ---------------------------------------------------------------------------------------------------------
// linear_act and conv2d: one node class each, on a shared base that saves the inputs and output
// (contract._save_inputs). Hand-written nodes like torch's own (ConvolutionBackward0, ...) rather than
// torch::autograd::Function: a Function's context keeps its arguments in a string-keyed map and wraps every
// input and output generically, which at the sizes of a small CNN costs more than the layer's own kernel.

// The saved (x, weight, bias, out) of a linear_act or conv2d call and the activation.
struct LayerBackward : public torch::autograd::Node {
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& v : saved_) v.reset_data();
  }

  // Saves (x, weight, bias, out) as the backward reads them; the metadata of the inputs not saved. Called
  // after the next edges are set (edge i valid: input i requires grad).
  void save(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& out,
            c10::string_view activation, double alpha, double beta) {
    const Activation act = parse_activation(activation);
    activation_ = std::string(activation);
    alpha_ = alpha;
    beta_ = beta;
    with_bias_ = bias.has_value() && bias->defined();
    const bool recompute = grad_needs_preactivation(act);
    // Edges: 0 = x, 1 = weight, 2 = bias.
    const std::array<bool, 3> needed{should_compute_output(1) || recompute, should_compute_output(0) || recompute,
                                     recompute};
    const std::array<const at::Tensor*, 3> inputs{&x, &weight, with_bias_ ? &*bias : nullptr};
    for (int i = 0; i < 3; ++i) {
      if (inputs[i] == nullptr) continue;
      if (needed[i]) {
        saved_[i] = torch::autograd::SavedVariable(*inputs[i], /*is_output=*/false);
        is_saved_[i] = true;
      } else {
        stand_in_sizes_[i] = inputs[i]->sym_sizes().vec();
        stand_in_dtypes_[i] = inputs[i]->scalar_type();
        stand_in_devices_[i] = inputs[i]->device();
      }
    }
    if (grad_needs_output(act)) {
      saved_[3] = torch::autograd::SavedVariable(out, /*is_output=*/true);
      is_saved_[3] = true;
    }
  }

  // A tensor of an input's shape, dtype and device holding one element, expanded (contract._stand_in): what
  // the backward op gets for an input not saved, whose values it never reads.
  static at::Tensor stand_in(const std::vector<c10::SymInt>& sizes, at::ScalarType dtype, at::Device device) {
    const std::vector<c10::SymInt> ones(sizes.size(), c10::SymInt(1));
    return at::empty_symint(ones, at::TensorOptions().dtype(dtype).device(device)).expand_symint(sizes);
  }

  // (x, weight, bias, out) for the backward op: the saved tensors, stand-ins for the inputs not saved.
  std::array<at::Tensor, 4> unpack() {
    std::array<at::Tensor, 4> result;
    for (int i = 0; i < 4; ++i) {
      if (is_saved_[i]) {
        result[i] = saved_[i].unpack(i == 3 ? getptr() : c10::intrusive_ptr<Node>());
      } else if (i < 2 || (i == 2 && with_bias_)) {
        result[i] = stand_in(stand_in_sizes_[i], stand_in_dtypes_[i], stand_in_devices_[i]);
      }
    }
    return result;
  }

  // (grad_x, grad_weight, grad_bias) asked for (contract._output_mask).
  std::array<bool, 3> output_mask() const {
    return {task_should_compute_output(0), task_should_compute_output(1), with_bias_ && task_should_compute_output(2)};
  }

  // Compiled autograd: what the nodes share (see call_compiled).
  void collect_layer(CompiledNodeArgs& args) const {
    for (int i = 0; i < 4; ++i) args.collect(saved_[i], /*is_output=*/i == 3);
    for (int i = 0; i < 4; ++i) args.collect(is_saved_[i]);
    for (int i = 0; i < 3; ++i) {
      args.collect(stand_in_sizes_[i]);
      args.collect(stand_in_dtypes_[i]);
      args.collect(stand_in_devices_[i]);
    }
    args.collect(activation_);
    args.collect(alpha_);
    args.collect(beta_);
    args.collect(with_bias_);
  }
  void swap_layer(SwapSavedVariables& saved, bool before) {
    for (auto& v : saved_) before ? saved.before(v) : saved.after(v);
    for (auto& sizes : stand_in_sizes_) before ? saved.before(sizes) : saved.after(sizes);
  }
  // Packs the saved tensors (None where not saved), the stand-ins' sizes, dtypes and devices, with_bias, the
  // activation and the output mask; unpack_layer reads them back, stand-ins made.
  void pack_layer(PackedArgs& args) {
    for (int i = 0; i < 4; ++i) {
      args.pack(is_saved_[i]
                    ? std::optional<at::Tensor>(saved_[i].unpack(i == 3 ? getptr() : c10::intrusive_ptr<Node>()))
                    : std::optional<at::Tensor>());
    }
    for (int i = 0; i < 3; ++i) {
      args.pack(stand_in_sizes_[i]);
      args.pack(stand_in_dtypes_[i]);
      args.pack(stand_in_devices_[i]);
    }
    args.pack(with_bias_);
    args.pack(activation_);
    args.pack(alpha_);
    args.pack(beta_);
    const auto mask = output_mask();
    args.pack(std::vector<bool>(mask.begin(), mask.end()));
  }
  // The types pack_layer packs, in its order.
  static std::vector<at::TypePtr> layer_schema() {
    std::vector<at::TypePtr> schema(4, packed_type<std::optional<at::Tensor>>());
    for (int i = 0; i < 3; ++i) {
      schema.push_back(packed_type<std::vector<c10::SymInt>>());
      schema.push_back(packed_type<at::ScalarType>());
      schema.push_back(packed_type<at::Device>());
    }
    for (const auto& type : {packed_type<bool>(), packed_type<std::string>(), packed_type<double>(),
                             packed_type<double>(), packed_type<std::vector<bool>>()}) {
      schema.push_back(type);
    }
    return schema;
  }
  struct LayerArgs {
    std::array<at::Tensor, 4> tensors;  // x, weight, bias, out as unpack() gives them
    std::string activation;
    double alpha, beta;
    std::array<bool, 3> mask;
  };
  static LayerArgs unpack_layer(PackedArgs& args) {
    LayerArgs a;
    std::array<std::optional<at::Tensor>, 4> saved;
    for (auto& t : saved) t = args.unpack<std::optional<at::Tensor>>();
    std::array<std::vector<c10::SymInt>, 3> sizes;
    std::array<at::ScalarType, 3> dtypes{};
    std::array<at::Device, 3> devices{at::kCPU, at::kCPU, at::kCPU};
    for (int i = 0; i < 3; ++i) {
      sizes[i] = args.unpack<std::vector<c10::SymInt>>();
      dtypes[i] = args.unpack<at::ScalarType>();
      devices[i] = args.unpack<at::Device>();
    }
    const bool with_bias = args.unpack<bool>();
    for (int i = 0; i < 4; ++i) {
      if (saved[i].has_value()) {
        a.tensors[i] = *saved[i];
      } else if (i < 2 || (i == 2 && with_bias)) {
        a.tensors[i] = stand_in(sizes[i], dtypes[i], devices[i]);
      }
    }
    a.activation = args.unpack<std::string>();
    a.alpha = args.unpack<double>();
    a.beta = args.unpack<double>();
    const auto mask = args.unpack<std::vector<bool>>();
    a.mask = {mask[0], mask[1], mask[2]};
    return a;
  }

  std::array<torch::autograd::SavedVariable, 4> saved_;  // x, weight, bias, out
  std::array<bool, 4> is_saved_{};
  std::array<std::vector<c10::SymInt>, 3> stand_in_sizes_;
  std::array<at::ScalarType, 3> stand_in_dtypes_{at::kFloat, at::kFloat, at::kFloat};
  std::array<at::Device, 3> stand_in_devices_{at::kCPU, at::kCPU, at::kCPU};
  std::string activation_;
  double alpha_ = 0, beta_ = 0;
  bool with_bias_ = false;
};

std::optional<at::Tensor> optional_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Records a linear_act or conv2d call: `node` (a LayerBackward) gets the next edges of x, weight and bias,
// `run()` computes the output below autograd, which gets the node as its grad_fn.
template <typename NodeT, typename Run>
at::Tensor record_layer(c10::intrusive_ptr<NodeT> node, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, c10::string_view activation, double alpha, double beta,
                        const char* op, Run&& run) {
  TORCH_CHECK_NOT_IMPLEMENTED(!torch::autograd::isFwGradDefined(x) && !torch::autograd::isFwGradDefined(weight) &&
                                  !torch::autograd::isFwGradDefined(bias),
                              "dlkernels.", op, ": forward-mode automatic differentiation is not supported");
  node->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = run();
  }
  torch::autograd::set_history(out, node);
  node->save(x, weight, bias, out, activation, alpha, beta);
  return out;
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

struct LinearActBackward final : public LayerBackward {
  std::string name() const override { return "LinearActBackward"; }

  static variable_list run(const at::Tensor& grad, const std::array<at::Tensor, 4>& t, c10::string_view activation,
                           double alpha, double beta, std::array<bool, 3> mask) {
    static const auto backward_op = op_handle<LinearActBackwardSig>("dlkernels::linear_act_backward");
    if (!grad.defined()) return variable_list(3);
    BackwardDispatch dispatch;
    auto [grad_x, grad_w, grad_b] =
        backward_op.call(grad, t[0], t[1], optional_tensor(t[2]), optional_tensor(t[3]), activation, alpha, beta, mask);
    return {grad_x, grad_w, grad_b};
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return run(grads[0], unpack(), activation_, alpha_, beta_, output_mask());
  }

  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& packed) {
    PackedArgs args(packed);
    const LayerArgs a = unpack_layer(args);
    return run(grads[0], a.tensors, a.activation, a.alpha, a.beta, a.mask);
  }
  void compiled_args(CompiledNodeArgs& args) const override { collect_layer(args); }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    swap_layer(saved, /*before=*/true);
    PackedArgs args;
    pack_layer(args);
    variable_list result = call_compiled(*this, grads, saved, args, layer_schema(), &functional);
    swap_layer(saved, /*before=*/false);
    return result;
  }
};

at::Tensor linear_act_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               c10::string_view activation, double alpha, double beta) {
  if (!recording(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return linear_act_op().call(x, weight, bias, activation, alpha, beta);
  }
  return record_layer(c10::make_intrusive<LinearActBackward>(), x, weight, bias, activation, alpha, beta, "linear_act",
                      [&] { return linear_act_op().call(x, weight, bias, activation, alpha, beta); });
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

struct Conv2dBackward final : public LayerBackward {
  std::string name() const override { return "Conv2dBackward"; }

  static variable_list run(const at::Tensor& grad, const std::array<at::Tensor, 4>& t, c10::IntArrayRef stride,
                           c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                           c10::string_view activation, double alpha, double beta, std::array<bool, 3> mask,
                           at::MemoryFormat x_format) {
    static const auto backward_op = op_handle<Conv2dBackwardSig>("dlkernels::conv2d_backward");
    if (!grad.defined()) return variable_list(3);
    BackwardDispatch dispatch;
    auto [grad_x, grad_w, grad_b] = backward_op.call(grad, t[0], t[1], optional_tensor(t[2]), optional_tensor(t[3]),
                                                     stride, padding, dilation, groups, activation, alpha, beta, mask);
    if (grad_x.defined()) grad_x = grad_x.contiguous(x_format);  // no copy when it already is in x's layout
    return {grad_x, grad_w, grad_b};
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return run(grads[0], unpack(), stride_, padding_, dilation_, groups_, activation_, alpha_, beta_, output_mask(),
               x_format_);
  }

  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& packed) {
    PackedArgs args(packed);
    const LayerArgs a = unpack_layer(args);
    const auto stride = args.unpack<std::vector<int64_t>>();
    const auto padding = args.unpack<std::vector<int64_t>>();
    const auto dilation = args.unpack<std::vector<int64_t>>();
    const auto groups = args.unpack<int64_t>();
    const auto x_format = static_cast<at::MemoryFormat>(args.unpack<int64_t>());
    return run(grads[0], a.tensors, stride, padding, dilation, groups, a.activation, a.alpha, a.beta, a.mask, x_format);
  }
  void compiled_args(CompiledNodeArgs& args) const override {
    collect_layer(args);
    args.collect(stride_);
    args.collect(padding_);
    args.collect(dilation_);
    args.collect(groups_);
    args.collect(x_format_);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    swap_layer(saved, /*before=*/true);
    PackedArgs args;
    pack_layer(args);
    args.pack(stride_);
    args.pack(padding_);
    args.pack(dilation_);
    args.pack(groups_);
    args.pack(static_cast<int64_t>(x_format_));
    std::vector<at::TypePtr> schema = layer_schema();
    for (int i = 0; i < 3; ++i) schema.push_back(packed_type<std::vector<int64_t>>());
    schema.push_back(packed_type<int64_t>());
    schema.push_back(packed_type<int64_t>());
    variable_list result = call_compiled(*this, grads, saved, args, schema, &functional);
    swap_layer(saved, /*before=*/false);
    return result;
  }

  std::vector<int64_t> stride_, padding_, dilation_;
  int64_t groups_ = 1;
  // grad_x follows x's layout; a stand-in for x (x not saved) has none, so the backward restores it.
  at::MemoryFormat x_format_ = at::MemoryFormat::Contiguous;
};

at::Tensor conv2d_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                           c10::string_view activation, double alpha, double beta) {
  if (!recording(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta);
  }
  auto node = c10::make_intrusive<Conv2dBackward>();
  node->stride_ = stride.vec();
  node->padding_ = padding.vec();
  node->dilation_ = dilation.vec();
  node->groups_ = groups;
  node->x_format_ = x.suggest_memory_format();
  return record_layer(node, x, weight, bias, activation, alpha, beta, "conv2d", [&] {
    return conv2d_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta);
  });
}

// ---------------------------------------------------------------------------------------------------------
// max_pool2d and max_pool2d_with_indices: torch's own scheme (MaxPool2DWithIndicesBackward0). When autograd
// records, both compute the indices in the forward, and one node saves x (the backward op reads its shape
// and layout) and the indices; the indices take no gradient.

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

// A pair argument as the node keeps it. The ops' schemas say int[2]; the kernels check the length, which a
// recorded call has passed by the time it is copied here.
std::array<int64_t, 2> pair_of(c10::IntArrayRef v) { return {v[0], v[1]}; }

struct MaxPool2dBackward final : public torch::autograd::Node {
  std::string name() const override { return "MaxPool2dBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    indices_.reset_data();
  }

  static variable_list run(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& indices,
                           c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                           c10::IntArrayRef dilation, bool ceil_mode, bool needed) {
    static const auto backward_op = op_handle<MaxPool2dBackwardSig>("dlkernels::max_pool2d_backward");
    variable_list result(1);
    if (!grad.defined() || !needed) return result;
    BackwardDispatch dispatch;
    result[0] = backward_op.call(grad, x, indices, kernel_size, stride, padding, dilation, ceil_mode);
    return result;
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined() || !task_should_compute_output(0)) return variable_list(1);
    return run(grads[0], x_.unpack(), indices_.unpack(getptr()), kernel_size_, stride_, padding_, dilation_, ceil_mode_,
               true);
  }

  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& packed) {
    PackedArgs args(packed);
    const auto x = args.unpack<at::Tensor>();
    const auto indices = args.unpack<at::Tensor>();
    const auto kernel_size = args.unpack<std::vector<int64_t>>();
    const auto stride = args.unpack<std::vector<int64_t>>();
    const auto padding = args.unpack<std::vector<int64_t>>();
    const auto dilation = args.unpack<std::vector<int64_t>>();
    const auto ceil_mode = args.unpack<bool>();
    const auto needed = args.unpack<bool>();
    return run(grads[0], x, indices, kernel_size, stride, padding, dilation, ceil_mode, needed);
  }
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(x_, /*is_output=*/false);
    args.collect(indices_, /*is_output=*/true);
    for (const auto& pair : {kernel_size_, stride_, padding_, dilation_}) {
      args.collect(pair[0]);
      args.collect(pair[1]);
    }
    args.collect(ceil_mode_);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    saved.before(x_);
    saved.before(indices_);
    PackedArgs args;
    args.pack(x_.unpack());
    args.pack(indices_.unpack(getptr()));
    for (const auto& pair : {kernel_size_, stride_, padding_, dilation_}) {
      args.pack(std::vector<int64_t>(pair.begin(), pair.end()));
    }
    args.pack(ceil_mode_);
    args.pack(task_should_compute_output(0));
    std::vector<at::TypePtr> schema(2, packed_type<at::Tensor>());
    for (int i = 0; i < 4; ++i) schema.push_back(packed_type<std::vector<int64_t>>());
    schema.push_back(packed_type<bool>());
    schema.push_back(packed_type<bool>());
    variable_list result = call_compiled(*this, grads, saved, args, schema, &functional);
    saved.after(x_);
    saved.after(indices_);
    return result;
  }

  torch::autograd::SavedVariable x_, indices_;
  std::array<int64_t, 2> kernel_size_{}, stride_{}, padding_{}, dilation_{};
  bool ceil_mode_ = false;
};

// The pooling with indices, below autograd, recorded when x requires grad: out gets the node as its grad_fn.
std::tuple<at::Tensor, at::Tensor> max_pool2d_recorded(c10::DispatchKeySet ks, const at::Tensor& x,
                                                       c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                       c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                       bool ceil_mode, const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(!torch::autograd::isFwGradDefined(x), "dlkernels.", op,
                              ": forward-mode automatic differentiation is not supported");
  c10::intrusive_ptr<MaxPool2dBackward> node;
  if (recording(x)) {
    node = c10::make_intrusive<MaxPool2dBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
  }
  at::Tensor out, indices;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, indices) = max_pool2d_with_indices_op().redispatch(ks & c10::after_autograd_keyset, x, kernel_size,
                                                                     stride, padding, dilation, ceil_mode);
  }
  if (node) {
    torch::autograd::set_history(out, node);
    node->x_ = torch::autograd::SavedVariable(x, /*is_output=*/false);
    node->indices_ = torch::autograd::SavedVariable(indices, /*is_output=*/true);
    node->kernel_size_ = pair_of(kernel_size);
    node->stride_ = pair_of(stride);
    node->padding_ = pair_of(padding);
    node->dilation_ = pair_of(dilation);
    node->ceil_mode_ = ceil_mode;
  }
  return {out, indices};
}

// The plain op computes no indices, except when autograd records: then the backward needs them, and
// computing them now costs less than finding them again from x in the backward.
at::Tensor max_pool2d_autograd(c10::DispatchKeySet ks, const at::Tensor& x, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               bool ceil_mode) {
  if (!recording(x) && !torch::autograd::isFwGradDefined(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return max_pool2d_op().redispatch(ks & c10::after_autograd_keyset, x, kernel_size, stride, padding, dilation,
                                      ceil_mode);
  }
  return std::get<0>(max_pool2d_recorded(ks, x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d"));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_autograd(c10::DispatchKeySet ks, const at::Tensor& x,
                                                                    c10::IntArrayRef kernel_size,
                                                                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                                    c10::IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_recorded(ks, x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_with_indices");
}

// ---------------------------------------------------------------------------------------------------------
// conv2d_maxpool (contract._conv2d_maxpool_setup): the inputs and the pooled output saved as linear_act's and
// conv2d's (LayerBackward::save), and the window index, which takes no gradient.

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

struct Conv2dMaxPoolBackward final : public LayerBackward {
  std::string name() const override { return "Conv2dMaxPoolBackward"; }

  void release_variables() override {
    LayerBackward::release_variables();
    std::lock_guard<std::mutex> lock(mutex_);
    index_.reset_data();
  }

  // The conv's and the pooling's arguments, as the backward op takes them after the tensors.
  struct Args {
    std::vector<int64_t> stride, padding, dilation;
    int64_t groups;
    std::vector<int64_t> pool_kernel_size, pool_stride, pool_padding;
    bool pool_ceil_mode;
    at::MemoryFormat x_format;
  };

  static variable_list run(const at::Tensor& grad, const std::array<at::Tensor, 4>& t, const at::Tensor& index,
                           const Args& a, c10::string_view activation, double alpha, double beta,
                           std::array<bool, 3> mask) {
    static const auto backward_op = op_handle<Conv2dMaxPoolBackwardSig>("dlkernels::conv2d_maxpool_backward");
    if (!grad.defined()) return variable_list(3);
    BackwardDispatch dispatch;
    auto [grad_x, grad_w, grad_b] = backward_op.call(
        grad, t[0], t[1], optional_tensor(t[2]), optional_tensor(t[3]), index, a.stride, a.padding, a.dilation,
        a.groups, activation, alpha, beta, a.pool_kernel_size, a.pool_stride, a.pool_padding, a.pool_ceil_mode, mask);
    if (grad_x.defined()) grad_x = grad_x.contiguous(a.x_format);  // no copy when it already is in x's layout
    return {grad_x, grad_w, grad_b};
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return run(grads[0], unpack(), index_.unpack(getptr()), args_, activation_, alpha_, beta_, output_mask());
  }

  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& packed) {
    PackedArgs args(packed);
    const LayerArgs layer = unpack_layer(args);
    const auto index = args.unpack<at::Tensor>();
    Args a;
    a.stride = args.unpack<std::vector<int64_t>>();
    a.padding = args.unpack<std::vector<int64_t>>();
    a.dilation = args.unpack<std::vector<int64_t>>();
    a.groups = args.unpack<int64_t>();
    a.pool_kernel_size = args.unpack<std::vector<int64_t>>();
    a.pool_stride = args.unpack<std::vector<int64_t>>();
    a.pool_padding = args.unpack<std::vector<int64_t>>();
    a.pool_ceil_mode = args.unpack<bool>();
    a.x_format = static_cast<at::MemoryFormat>(args.unpack<int64_t>());
    return run(grads[0], layer.tensors, index, a, layer.activation, layer.alpha, layer.beta, layer.mask);
  }
  void compiled_args(CompiledNodeArgs& args) const override {
    collect_layer(args);
    args.collect(index_, /*is_output=*/true);
    for (const auto* v : {&args_.stride, &args_.padding, &args_.dilation}) args.collect(*v);
    args.collect(args_.groups);
    for (const auto* v : {&args_.pool_kernel_size, &args_.pool_stride, &args_.pool_padding}) args.collect(*v);
    args.collect(args_.pool_ceil_mode);
    args.collect(args_.x_format);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    swap_layer(saved, /*before=*/true);
    saved.before(index_);
    PackedArgs args;
    pack_layer(args);
    args.pack(index_.unpack(getptr()));
    for (const auto* v : {&args_.stride, &args_.padding, &args_.dilation}) args.pack(*v);
    args.pack(args_.groups);
    for (const auto* v : {&args_.pool_kernel_size, &args_.pool_stride, &args_.pool_padding}) args.pack(*v);
    args.pack(args_.pool_ceil_mode);
    args.pack(static_cast<int64_t>(args_.x_format));
    std::vector<at::TypePtr> schema = layer_schema();
    schema.push_back(packed_type<at::Tensor>());
    for (int i = 0; i < 3; ++i) schema.push_back(packed_type<std::vector<int64_t>>());
    schema.push_back(packed_type<int64_t>());
    for (int i = 0; i < 3; ++i) schema.push_back(packed_type<std::vector<int64_t>>());
    schema.push_back(packed_type<bool>());
    schema.push_back(packed_type<int64_t>());
    variable_list result = call_compiled(*this, grads, saved, args, schema, &functional);
    swap_layer(saved, /*before=*/false);
    saved.after(index_);
    return result;
  }

  torch::autograd::SavedVariable index_;
  Args args_;
};

std::tuple<at::Tensor, at::Tensor> conv2d_maxpool_autograd(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, c10::string_view activation, double alpha,
    double beta, c10::IntArrayRef pool_kernel_size, c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding,
    bool pool_ceil_mode) {
  const auto call = [&] {
    return conv2d_maxpool_op().call(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta,
                                    pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode);
  };
  if (!recording(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call();
  }
  auto node = c10::make_intrusive<Conv2dMaxPoolBackward>();
  node->args_ = {
      stride.vec(),       padding.vec(),  dilation.vec(),           groups, pool_kernel_size.vec(), pool_stride.vec(),
      pool_padding.vec(), pool_ceil_mode, x.suggest_memory_format()};
  at::Tensor index;
  // The window index takes no gradient: only the pooled output gets the node as its grad_fn.
  const at::Tensor out = record_layer(node, x, weight, bias, activation, alpha, beta, "conv2d_maxpool", [&] {
    at::Tensor pooled;
    std::tie(pooled, index) = call();
    return pooled;
  });
  node->index_ = torch::autograd::SavedVariable(index, /*is_output=*/true);
  return {out, index};
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
