"""Build of dlkernels: one extension, dlkernels._C.

C++ sources are always built. CUDA sources (csrc/cuda/*.cu) are built when torch is a CUDA build and nvcc
is found, whether or not a GPU is visible. Switches (environment variables):

  DLKERNELS_CUDA=auto|1|0   auto (default) as above; 1 requires CUDA and fails loudly without it; 0 builds
                            the CPU kernels only (fast iterations when no .cu file changed).
  TORCH_CUDA_ARCH_LIST      archs to build, e.g. "9.0". Without it and without a visible GPU, the default
                            is DEFAULT_CUDA_ARCHS (cpp_extension cannot guess an arch with no GPU).
  CUDA_HOME                 the toolkit; defaults to /usr/local/cuda when that exists.
"""
import glob
import os
import shutil

from setuptools import setup

# cpp_extension reads CUDA_HOME when it is imported. Without it, torch derives the toolkit from the nvcc on
# PATH, which is a wrapper in /usr/local/bin on some machines, and the link then fails.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def want_cuda():
    mode = os.environ.get("DLKERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"DLKERNELS_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return False
    # Never torch.cuda.is_available(): it is False on a build machine without a GPU.
    have_toolkit = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and (
        os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc")
    )
    if mode == "1" and not have_toolkit:
        raise SystemExit(
            "DLKERNELS_CUDA=1 but CUDA cannot be built: torch.version.cuda="
            f"{torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}. Install a CUDA build of torch "
            "and the CUDA toolkit (nvcc), or set CUDA_HOME."
        )
    return bool(have_toolkit)


def cuda_arch_list():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        if torch.cuda.is_available():
            return None  # cpp_extension builds for the visible GPUs
        archs = DEFAULT_CUDA_ARCHS
        # cpp_extension crashes on an empty list when no GPU is visible.
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


def extension():
    sources = [os.path.join("csrc", "registration.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    with_cuda = want_cuda()
    define_macros = [
        ("DLKERNELS_PYTHON_MODULE", None),
        ("DLKERNELS_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard is the one torch's headers need (cpp_extension sets it)
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        archs = cuda_arch_list()
        if archs is None:
            archs = ";".join(f"{major}.{minor}" for major, minor in
                             {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        define_macros += [
            ("DLKERNELS_WITH_CUDA", None),
            ("DLKERNELS_CUDA_VERSION", f'"{torch.version.cuda}"'),
            ("DLKERNELS_CUDA_ARCHS", f'"{archs}"'),
        ]
        return cpp_extension.CUDAExtension(
            "dlkernels._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr",
                                                             "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "dlkernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
