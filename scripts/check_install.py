"""Checks an installed dlkernels (a wheel in a fresh virtualenv, say): it imports from the install, not from a
source tree, its extension loads, `python -m dlkernels info` reports it, and every op runs on the CPU,
forward and backward, with the native kernels, matching PyTorch.

    python scripts/check_install.py [--expect-cuda-compiler system|pypi]

Run it from outside the source tree. Exits non-zero with the reason on the first failure.
"""
import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F


def check(condition, message):
    if not condition:
        raise SystemExit(f"check_install: FAILED: {message}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expect-cuda-compiler", choices=["system", "pypi"],
                        help="also require CUDA kernels built by this kind of toolkit")
    args = parser.parse_args(argv)

    import dlkernels
    from dlkernels import _ext

    location = os.path.dirname(dlkernels.__file__)
    check(os.path.join("site-packages", "dlkernels") in location, f"dlkernels imported from {location}, not an install")
    check(_ext.loaded(), f"the extension did not load: {_ext.LOAD_ERROR}")
    info = subprocess.run([sys.executable, "-m", "dlkernels", "info"], capture_output=True, text=True)
    check(info.returncode == 0, info.stdout + info.stderr)
    print(info.stdout)
    if args.expect_cuda_compiler:
        build = _ext.build_info()
        check(build["with_cuda"], "the extension has no CUDA kernels")
        check(f"({args.expect_cuda_compiler} toolkit" in (build["nvcc"] or ""), f"CUDA compiler: {build['nvcc']}")

    torch.manual_seed(0)
    ops = dlkernels.ops

    def grads(fn, *tensors):
        tensors = [t.detach().requires_grad_() for t in tensors]
        out = fn(*tensors)
        out.backward(torch.ones_like(out))
        return [out.detach()] + [t.grad for t in tensors]

    x, w, b = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    for act in dlkernels.ACTIVATIONS:
        ours = grads(lambda x, w, b: ops.linear_act(x, w, b, activation=act, backend="native"), x, w, b)
        theirs = grads(lambda x, w, b: dlkernels.reference.linear_act(x, w, b, act), x, w, b)
        for a, e in zip(ours, theirs):
            torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4, msg=lambda m: f"linear_act {act}: {m}")

    x, w, b = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    ours = grads(lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding=1, activation="relu", backend="native"), x, w, b)
    theirs = grads(lambda x, w, b: torch.relu(F.conv2d(x, w, b, stride=2, padding=1)), x, w, b)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)

    x = torch.randn(2, 3, 9, 8)
    ours = grads(lambda x: ops.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, backend="native"), x)
    theirs = grads(lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True), x)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, atol=0, rtol=0)

    x, w, b = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    ours = grads(lambda x, w, b: ops.conv2d_maxpool(x, w, b, padding=1, pool_kernel_size=3, pool_stride=2,
                                                    backend="native"), x, w, b)
    theirs = grads(lambda x, w, b: F.max_pool2d(torch.relu(F.conv2d(x, w, b, padding=1)), 3, 2), x, w, b)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    fast = dlkernels.convert(model, backend="native")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    print("check_install: dlkernels", dlkernels.__version__, "from", location, "works: every op, forward and backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
