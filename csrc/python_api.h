// The Python entry points of the native ops (python_api.cpp), added to the module dlkernels._C.
#pragma once

#ifdef DLKERNELS_PYTHON_MODULE
#include <Python.h>

namespace dlkernels {
// Adds linear_act, conv2d and max_pool2d_functional to `module` (dlkernels._C); throws
// pybind11::error_already_set on failure.
void add_python_api(PyObject* module);
}  // namespace dlkernels
#endif
