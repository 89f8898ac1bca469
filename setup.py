"""Build of dlkernels: one extension, dlkernels._C.

C++ sources are always built. CUDA sources (csrc/cuda/*.cu) are built when torch is a CUDA build and nvcc
is found, whether or not a GPU is visible. Switches (environment variables):

  DLKERNELS_CUDA=auto|1|0   auto (default) as above; 1 requires CUDA and fails loudly without it; 0 builds
                            the CPU kernels only (fast iterations when no .cu file changed).
  TORCH_CUDA_ARCH_LIST      archs to build, e.g. "9.0". Without it and without a visible GPU, the default
                            is DEFAULT_CUDA_ARCHS (cpp_extension cannot guess an arch with no GPU).
  DLKERNELS_CUDA_EMU=0|1    1 also builds dlkernels._cuda_emu, the CPU emulator of the CUDA kernels (the same
                            csrc/cuda sources compiled by the host compiler; a test tool, no GPU or nvcc
                            needed). scripts/install.sh sets it: the test suite runs the CUDA kernels in it.
  CUDA_HOME                 a toolkit to prefer. The compiler is the first toolkit whose CUDA major version is
                            torch's: CUDA_HOME, CUDA_PATH, /usr/local/cuda, the nvcc on PATH, then NVIDIA's
                            compiler from PyPI if installed (scripts/install.sh installs it when nothing else
                            matches; see scripts/cuda_toolkit.py).

The build records what it was built against in dlkernels/_build_info.py, which dlkernels reads before it
loads the extension (a binary built for another torch is not loaded), and the wheel requires that torch.
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import cuda_toolkit  # noqa: E402
import torch  # noqa: E402

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # Ampere and Hopper kernels, and PTX that newer cards compile on load


def log(message):
    print(f"dlkernels build: {message}", file=sys.stderr, flush=True)


def cuda_mode():
    mode = os.environ.get("DLKERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"DLKERNELS_CUDA must be auto, 1 or 0, got {mode!r}")
    return mode


# cpp_extension reads CUDA_HOME once, when it is imported: choose the toolkit first. Never from
# torch.cuda.is_available(), which is False on a build machine without a GPU.
TOOLKIT = cuda_toolkit.find() if cuda_mode() != "0" else None
if TOOLKIT:
    if os.environ.get("CUDA_HOME") and os.path.realpath(os.environ["CUDA_HOME"]) != os.path.realpath(TOOLKIT.home):
        log(f"CUDA_HOME={os.environ['CUDA_HOME']} does not match torch's CUDA {torch.version.cuda}: not used")
    os.environ["CUDA_HOME"] = TOOLKIT.home

from torch.utils import cpp_extension  # noqa: E402


def want_cuda():
    mode = cuda_mode()
    if mode == "0":
        log("CUDA kernels off (DLKERNELS_CUDA=0)")
        return False
    if TOOLKIT is None:
        reason = (f"torch {torch.__version__} is not a CUDA build" if torch.version.cuda is None else
                  f"no CUDA {torch.version.cuda} compiler found (CUDA_HOME, /usr/local/cuda, nvcc on PATH, "
                  "NVIDIA's PyPI compiler); scripts/install.sh installs the PyPI one")
        if mode == "1":
            raise SystemExit(f"DLKERNELS_CUDA=1 but CUDA cannot be built: {reason}")
        log(f"CUDA kernels off: {reason}")
        return False
    log(f"CUDA kernels with nvcc {TOOLKIT.version} ({TOOLKIT.source} toolkit at {TOOLKIT.home})")
    return True


def cuda_arch_list():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        if torch.cuda.is_available():
            return None  # cpp_extension builds for the visible GPUs
        archs = DEFAULT_CUDA_ARCHS
        # cpp_extension crashes on an empty list when no GPU is visible.
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


BUILD = {}  # with_cuda, archs: set by extension()


def build_info_text(with_cuda, archs):
    """dlkernels/_build_info.py: what this build is for, readable without loading the extension."""
    info = {
        "TORCH_VERSION": torch.__version__,
        "CUDA_VERSION": torch.version.cuda if with_cuda else None,
        "CUDA_ARCHS": archs if with_cuda else None,
        "NVCC": f"nvcc {TOOLKIT.version} ({TOOLKIT.source} toolkit, {TOOLKIT.home})" if with_cuda else None,
    }
    return '"""Written by setup.py when it builds the extension: what it was built for."""\n' + "".join(
        f"{key} = {value!r}\n" for key, value in info.items())


class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """build_ext that also writes dlkernels/_build_info.py next to the extension it builds (in the source
    tree for an in-place or editable build, in the build folder, and so the wheel, otherwise)."""

    def run(self):
        text = build_info_text(**BUILD)
        folder = os.path.join(ROOT if self.inplace else self.build_lib, "dlkernels")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "_build_info.py"), "w") as f:
            f.write(text)
        super().run()


def extension():
    # csrc/*.cpp: the schemas (registration.cpp), the device-independent kernels (autograd.cpp) and the
    # Python entry points (python_api.cpp).
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp"))) + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    with_cuda = want_cuda()
    define_macros = [
        ("DLKERNELS_PYTHON_MODULE", None),
        ("DLKERNELS_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    # The C++ standard is the one torch's headers need (cpp_extension sets it). -g0: Python's own CFLAGS, which
    # the build starts from, often ask for debug information, which takes about 40% of the compile and most of
    # the library's size.
    cxx_flags = ["-O3", "-g0", "-fopenmp"]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        archs = cuda_arch_list()
        if archs is None:
            archs = ";".join(f"{major}.{minor}" for major, minor in
                             {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        log(f"CUDA archs {archs}")
        BUILD.update(with_cuda=True, archs=archs)
        define_macros += [
            ("DLKERNELS_WITH_CUDA", None),
            ("DLKERNELS_CUDA_VERSION", f'"{torch.version.cuda}"'),
            ("DLKERNELS_CUDA_ARCHS", f'"{archs}"'),
        ]
        ext = cpp_extension.CUDAExtension(
            "dlkernels._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr",
                                                             "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
        # The PyPI toolkit ships only the versioned runtime library (libcudart.so.13): link that by name.
        cudart = cuda_toolkit.runtime_library(TOOLKIT.home)
        ext.libraries = [cudart if lib == "cudart" and cudart else lib for lib in ext.libraries]
        return ext
    BUILD.update(with_cuda=False, archs=None)
    return cpp_extension.CppExtension(
        "dlkernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


def cuda_emulator():
    """dlkernels._cuda_emu when DLKERNELS_CUDA_EMU=1, else None."""
    mode = os.environ.get("DLKERNELS_CUDA_EMU", "0").strip()
    if mode not in ("0", "1"):
        raise SystemExit(f"DLKERNELS_CUDA_EMU must be 0 or 1, got {mode!r}")
    if mode == "0":
        return None
    log("the CUDA emulator dlkernels._cuda_emu (DLKERNELS_CUDA_EMU=1)")
    return cpp_extension.CppExtension(
        "dlkernels._cuda_emu",
        sorted(glob.glob(os.path.join("csrc", "cuda_emu", "*.cpp"))),
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("DLKERNELS_CUDA_EMU", None)],
        # -O1: the emulated kernels run on tiny test shapes, and the build stays short.
        extra_compile_args={"cxx": ["-O1", "-g0", "-Wno-unknown-pragmas"]},
    )


def torch_requirement():
    """The wheel's kernels are compiled for exactly this torch (its C++ ABI has no compatibility promise)."""
    return f"torch=={torch.__version__.split('+')[0]}"


setup(
    install_requires=[torch_requirement(), "numpy", "packaging", "triton>=3.6; sys_platform == 'linux'"],
    ext_modules=[ext for ext in (extension(), cuda_emulator()) if ext is not None],
    cmdclass={"build_ext": BuildExt},
)
