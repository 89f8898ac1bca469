// The Python entry points of the native ops (dlkernels._C.<name>): what dlkernels.ops and the layers call on
// the native backend instead of torch.ops.dlkernels.<op>. That generic binding matches the call against the
// schema, converts each argument to an IValue and looks for __torch_function__ on every element of every int
// list: for max_pool2d's four pairs it costs more than torch's whole F.max_pool2d. Here the arguments are read
// straight from the Python objects and the op is called through the dispatcher (unboxed), so autograd
// (csrc/autograd.cpp), the Python dispatch modes (FakeTensorMode, ...) and every other dispatch key see the
// same call as through torch.ops.
//
// An entry takes the plain calls only: tensors that are torch.Tensor or Parameter with no torch function mode
// active, ints as Python ints (or lists / tuples of them), floats as Python floats or ints, strings, bools.
// For anything else it returns NotImplemented and the caller takes the general path (torch.ops.dlkernels),
// which handles tensor subclasses, modes, SymInts and the TypeErrors. Errors of the op itself (its argument
// checks) are raised from here as through torch.ops: TypeError, ValueError, RuntimeError. torch.compile does
// not trace into these functions: dlkernels.ops calls the torch.ops op while compiling.
//
// Built into the Python module only (setup.py); CMakeLists.txt's library has no Python.
#ifdef DLKERNELS_PYTHON_MODULE
#include "python_api.h"

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/Parallel.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/string_view.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

namespace dlkernels {
namespace {

using Pair = std::array<int64_t, 2>;

// ---------------------------------------------------------------------------------------------------------
// Reading the arguments: each reader returns false for a value it does not take.

// A torch.Tensor or Parameter (a subclass may define __torch_function__); the caller has checked that no
// torch function mode is active (the general path dispatches to the mode).
bool read_tensor(PyObject* obj, const at::Tensor*& out) {
  if (!THPVariable_CheckExact(obj)) return false;
  out = &THPVariable_Unpack(obj);
  return true;
}

bool read_optional_tensor(PyObject* obj, std::optional<at::Tensor>& out) {
  if (obj == Py_None) return true;
  if (!THPVariable_CheckExact(obj)) return false;
  out = THPVariable_Unpack(obj);
  return true;
}

// A Python int that fits in int64 (not a bool, which the general path rejects).
bool read_int(PyObject* obj, int64_t& out) {
  if (!PyLong_CheckExact(obj)) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(obj, &overflow);
  return overflow == 0;
}

// An int, or a list or tuple of one or two ints (torch.nn.functional's forms), as a pair.
bool read_pair(PyObject* obj, Pair& out) {
  if (read_int(obj, out[0])) {
    out[1] = out[0];
    return true;
  }
  if (!PyList_CheckExact(obj) && !PyTuple_CheckExact(obj)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
  PyObject** items = PySequence_Fast_ITEMS(obj);
  if (n == 1 && read_int(items[0], out[0])) {
    out[1] = out[0];
    return true;
  }
  return n == 2 && read_int(items[0], out[0]) && read_int(items[1], out[1]);
}

// max_pool2d's stride: None or an empty list / tuple (torch's "same as kernel_size"), else a pair.
bool read_stride(PyObject* obj, const Pair& kernel_size, Pair& out) {
  if (obj == Py_None || ((PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) && PySequence_Fast_GET_SIZE(obj) == 0)) {
    out = kernel_size;
    return true;
  }
  return read_pair(obj, out);
}

bool read_double(PyObject* obj, double& out) {
  if (PyFloat_CheckExact(obj)) {
    out = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  int64_t i = 0;
  if (!read_int(obj, i)) return false;
  out = static_cast<double>(i);
  return true;
}

bool read_bool(PyObject* obj, bool& out) {
  if (obj != Py_True && obj != Py_False) return false;
  out = obj == Py_True;
  return true;
}

// A str, viewed (the Python object outlives the call).
bool read_string(PyObject* obj, c10::string_view& out) {
  if (!PyUnicode_CheckExact(obj)) return false;
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj, &size);
  if (data == nullptr) {
    PyErr_Clear();  // not encodable: the general path raises for it
    return false;
  }
  out = c10::string_view(data, static_cast<size_t>(size));
  return true;
}

// Whether a call with `nargs` arguments may take the fast path at all.
bool plain_call(Py_ssize_t nargs, Py_ssize_t expected) {
  return nargs == expected && !at::impl::torch_function_mode_enabled();
}

// ---------------------------------------------------------------------------------------------------------
// Running the op

// Below this many input elements an op runs with the GIL held: releasing and taking it back costs more than
// such an op, and other Python threads gain nothing from a pause that short.
constexpr int64_t kReleaseGilElements = int64_t(1) << 15;

// Runs fn() with the GIL released when the inputs hold `elements` elements or more; wraps its tensor.
template <typename Fn>
PyObject* run(int64_t elements, Fn&& fn) {
  at::Tensor out;
  {
    std::optional<pybind11::gil_scoped_release> no_gil;
    if (elements >= kReleaseGilElements) no_gil.emplace();
    out = fn();
  }
  return THPVariable_Wrap(std::move(out));
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// ---------------------------------------------------------------------------------------------------------
// linear_act and conv2d: the ops' own arguments (the schemas of csrc/registration.cpp), as dlkernels.ops and
// the layers pass them once normalised.

using LinearActSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                c10::string_view, double, double);
using Conv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::IntArrayRef,
                             c10::IntArrayRef, c10::IntArrayRef, int64_t, c10::string_view, double, double);

// linear_act(x, weight, bias, activation, alpha, beta)
PyObject* linear_act(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = op_handle<LinearActSig>("dlkernels::linear_act");
  const at::Tensor *x = nullptr, *weight = nullptr;
  std::optional<at::Tensor> bias;
  c10::string_view activation;
  double alpha = 0, beta = 0;
  if (!plain_call(nargs, 6) || !read_tensor(args[0], x) || !read_tensor(args[1], weight) ||
      !read_optional_tensor(args[2], bias) || !read_string(args[3], activation) || !read_double(args[4], alpha) ||
      !read_double(args[5], beta)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  return run(x->numel() + weight->numel(), [&] { return op.call(*x, *weight, bias, activation, alpha, beta); });
  END_HANDLE_TH_ERRORS
}

// conv2d(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta)
PyObject* conv2d(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = op_handle<Conv2dSig>("dlkernels::conv2d");
  const at::Tensor *x = nullptr, *weight = nullptr;
  std::optional<at::Tensor> bias;
  Pair stride, padding, dilation;
  int64_t groups = 1;
  c10::string_view activation;
  double alpha = 0, beta = 0;
  if (!plain_call(nargs, 10) || !read_tensor(args[0], x) || !read_tensor(args[1], weight) ||
      !read_optional_tensor(args[2], bias) || !read_pair(args[3], stride) || !read_pair(args[4], padding) ||
      !read_pair(args[5], dilation) || !read_int(args[6], groups) || !read_string(args[7], activation) ||
      !read_double(args[8], alpha) || !read_double(args[9], beta)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  return run(x->numel() + weight->numel(),
             [&] { return op.call(*x, *weight, bias, stride, padding, dilation, groups, activation, alpha, beta); });
  END_HANDLE_TH_ERRORS
}

// ---------------------------------------------------------------------------------------------------------
// max_pool2d: dlkernels.ops.max_pool2d's own arguments, where the Python API's normalisation would cost
// more than the op: x 3-D (unbatched) or 4-D; kernel_size, padding, dilation an int or one or two ints;
// stride None (or empty) for kernel_size.

using MaxPool2dSig = at::Tensor(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                                c10::IntArrayRef, bool);
using MaxPool2dWithIndicesSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef,
                                                                   c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                                                                   bool);

// max_pool2d_functional(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
PyObject* max_pool2d_functional(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = op_handle<MaxPool2dSig>("dlkernels::max_pool2d");
  static const auto op_with_indices = op_handle<MaxPool2dWithIndicesSig>("dlkernels::max_pool2d_with_indices");
  const at::Tensor* x = nullptr;
  Pair kernel_size, stride, padding, dilation;
  bool ceil_mode = false, return_indices = false;
  if (!plain_call(nargs, 7) || !read_tensor(args[0], x) || !read_pair(args[1], kernel_size) ||
      !read_stride(args[2], kernel_size, stride) || !read_pair(args[3], padding) || !read_pair(args[4], dilation) ||
      !read_bool(args[5], ceil_mode) || !read_bool(args[6], return_indices)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const bool unbatched = x->dim() == 3;
  if (!return_indices) {
    return run(x->numel(), [&] {
      const at::Tensor out =
          op.call(unbatched ? x->unsqueeze(0) : *x, kernel_size, stride, padding, dilation, ceil_mode);
      return unbatched ? out.squeeze(0) : out;
    });
  }
  at::Tensor indices;
  PyObject* out = run(x->numel(), [&] {
    auto [pooled, ind] =
        op_with_indices.call(unbatched ? x->unsqueeze(0) : *x, kernel_size, stride, padding, dilation, ceil_mode);
    indices = unbatched ? ind.squeeze(0) : ind;
    return unbatched ? pooled.squeeze(0) : pooled;
  });
  if (out == nullptr) return nullptr;
  PyObject* wrapped_indices = THPVariable_Wrap(std::move(indices));
  if (wrapped_indices == nullptr) {
    Py_DECREF(out);
    return nullptr;
  }
  PyObject* result = PyTuple_New(2);
  if (result == nullptr) {
    Py_DECREF(out);
    Py_DECREF(wrapped_indices);
    return nullptr;
  }
  PyTuple_SET_ITEM(result, 0, out);  // steals the references
  PyTuple_SET_ITEM(result, 1, wrapped_indices);
  return result;
  END_HANDLE_TH_ERRORS
}

// ---------------------------------------------------------------------------------------------------------
// auto_key(x, weight, bias): what of a call's tensors decides backend="auto"'s choice (dlkernels.ops._auto, whose
// full key reads the same from Python at several times the cost, more than a small op itself): x's sizes, strides,
// dtype and device, the weight's and bias's sizes (or their absence), which inputs autograd differentiates (none
// when it records nothing), and the intra-op thread count, as bytes; weight and bias may be None. None for
// anything but plain strided tensors: the caller takes its general path.
PyObject* auto_key(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const at::Tensor* x = nullptr;
  std::optional<at::Tensor> weight, bias;
  if (nargs != 3 || !read_tensor(args[0], x) || !read_optional_tensor(args[1], weight) ||
      !read_optional_tensor(args[2], bias) || x->layout() != at::kStrided) {
    Py_RETURN_NONE;
  }
  int64_t key[48];
  int n = 0;
  const auto put_sizes = [&](const std::optional<at::Tensor>& t) {
    if (!t) {
      key[n++] = -1;
      return true;
    }
    if (t->dim() > 8) return false;
    key[n++] = t->dim();
    for (const int64_t size : t->sizes()) key[n++] = size;
    return true;
  };
  if (x->dim() > 8) Py_RETURN_NONE;
  key[n++] = x->dim();
  for (const int64_t size : x->sizes()) key[n++] = size;
  for (const int64_t stride : x->strides()) key[n++] = stride;
  key[n++] = static_cast<int64_t>(x->scalar_type());
  key[n++] = static_cast<int64_t>(x->device().type());
  key[n++] = x->device().index();
  if (!put_sizes(weight) || !put_sizes(bias)) Py_RETURN_NONE;
  const bool rx = x->requires_grad(), rw = weight && weight->requires_grad(), rb = bias && bias->requires_grad();
  key[n++] = at::GradMode::is_enabled() && (rx || rw || rb) ? 1 + rx + 2 * rw + 4 * rb : 0;
  key[n++] = at::get_num_threads();
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(key), static_cast<Py_ssize_t>(n * sizeof(int64_t)));
  END_HANDLE_TH_ERRORS
}

template <PyObject* (*Fn)(PyObject*, PyObject* const*, Py_ssize_t)>
PyCFunction fastcall() {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(Fn));
}

PyMethodDef kMethods[] = {
    {"linear_act", fastcall<&linear_act>(), METH_FASTCALL,
     "linear_act(x, weight, bias, activation, alpha, beta): torch.ops.dlkernels.linear_act without the generic "
     "binding; NotImplemented for a call it does not take (csrc/python_api.cpp)"},
    {"conv2d", fastcall<&conv2d>(), METH_FASTCALL,
     "conv2d(x, weight, bias, stride, padding, dilation, groups, activation, alpha, beta): "
     "torch.ops.dlkernels.conv2d without the generic binding; NotImplemented for a call it does not take"},
    {"max_pool2d_functional", fastcall<&max_pool2d_functional>(), METH_FASTCALL,
     "max_pool2d_functional(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices): "
     "dlkernels.ops.max_pool2d on the native backend; NotImplemented for a call it does not take"},
    {"auto_key", fastcall<&auto_key>(), METH_FASTCALL,
     "auto_key(x, weight, bias): bytes of what of the call's tensors decides backend='auto''s choice, or None "
     "for anything but plain strided tensors (csrc/python_api.cpp)"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

void add_python_api(PyObject* module) {
  if (PyModule_AddFunctions(module, kMethods) != 0) throw pybind11::error_already_set();
}

}  // namespace dlkernels
#endif  // DLKERNELS_PYTHON_MODULE
