"""The CUDA compiler for building dlkernels' CUDA kernels: a system toolkit that matches torch's CUDA, or else
NVIDIA's compiler from PyPI (nvidia-cuda-nvcc and the packages it needs) at torch's CUDA version.

    python scripts/cuda_toolkit.py find     prints the toolkit to build with (CUDA_HOME), nothing if none
    python scripts/cuda_toolkit.py ensure   the same, installing the PyPI compiler first when none matches

setup.py uses find(); scripts/install.sh uses `ensure`. A toolkit matches when its CUDA major version is
torch's (what torch.utils.cpp_extension requires); a matching system toolkit always wins. The PyPI packages
lay the toolkit out as site-packages/nvidia/cu<major>/{bin,include,lib}, which is a usable CUDA_HOME.
Standard library only (and torch, for its CUDA version), so setup.py can import it before cpp_extension.
"""
import glob
import os
import re
import shutil
import site
import subprocess
import sys
from typing import NamedTuple, Optional

# The PyPI packages that make up a compiler toolchain for CUDA >= 13 (nvcc needs the C runtime headers, the
# NVVM backend and CCCL's headers; the runtime library itself comes with torch).
PYPI_PACKAGES = ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl")


class Toolkit(NamedTuple):
    home: str  # CUDA_HOME
    version: str  # "13.0"
    source: str  # "system" or "pypi"

    @property
    def nvcc(self):
        return os.path.join(self.home, "bin", "nvcc")


def torch_cuda_version() -> Optional[str]:
    import torch

    return torch.version.cuda


def nvcc_version(nvcc: str) -> Optional[str]:
    """The release ("13.0") that `nvcc --version` reports, or None if it does not run."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _major(version: str) -> str:
    return version.split(".")[0]


def _system_candidates():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield os.environ[var]
    yield "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        # The nvcc on PATH may be a wrapper script outside its toolkit: only its real folder counts.
        yield os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _pypi_candidates(major: str):
    folders = list(site.getsitepackages()) + [site.getusersitepackages()] + list(sys.path)
    for folder in dict.fromkeys(f for f in folders if f and os.path.isdir(f)):
        yield os.path.join(folder, "nvidia", f"cu{major}")


def _matching(home: str, cuda_version: str, source: str) -> Optional[Toolkit]:
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.path.isfile(nvcc) or not os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
        return None
    version = nvcc_version(nvcc)
    if version is None or _major(version) != _major(cuda_version):
        return None
    return Toolkit(os.path.abspath(home), version, source)


def find(cuda_version: Optional[str] = None) -> Optional[Toolkit]:
    """The toolkit to build with for torch's CUDA version: a matching system toolkit, else an installed PyPI
    one; None when torch is not a CUDA build or nothing matches."""
    cuda_version = cuda_version or torch_cuda_version()
    if not cuda_version:
        return None
    for home in _system_candidates():
        found = _matching(home, cuda_version, "system")
        if found:
            return found
    for home in _pypi_candidates(_major(cuda_version)):
        found = _matching(home, cuda_version, "pypi")
        if found:
            return found
    return None


def pypi_requirements(cuda_version: str):
    """pip requirements for NVIDIA's compiler at `cuda_version` ("13.0" -> nvidia-cuda-nvcc==13.0.* ...)."""
    if int(_major(cuda_version)) < 13:
        raise RuntimeError(
            f"torch is built for CUDA {cuda_version}; the compiler from PyPI is supported for CUDA 13 and newer "
            "only. Install the CUDA toolkit of that version and set CUDA_HOME, or build without CUDA "
            "(DLKERNELS_CUDA=0).")
    return [f"{name}=={cuda_version}.*" for name in PYPI_PACKAGES]


def runtime_library(home: str) -> Optional[str]:
    """The linker name of the CUDA runtime in `home`: "cudart" when an unversioned libcudart.so exists (a
    system toolkit), else ":libcudart.so.<N>" (the PyPI layout ships only the versioned library)."""
    for lib in ("lib64", "lib"):
        folder = os.path.join(home, lib)
        if os.path.exists(os.path.join(folder, "libcudart.so")):
            return "cudart"
        versioned = sorted(glob.glob(os.path.join(folder, "libcudart.so.*")))
        if versioned:
            return ":" + os.path.basename(versioned[0])
    return None


def ensure(python: str = sys.executable) -> Optional[Toolkit]:
    """find(), installing the PyPI compiler into `python`'s environment first when nothing matches."""
    cuda_version = torch_cuda_version()
    if not cuda_version:
        return None
    found = find(cuda_version)
    if found:
        return found
    requirements = pypi_requirements(cuda_version)
    print(f"no CUDA {cuda_version} toolkit found: installing NVIDIA's compiler from PyPI ({' '.join(requirements)})",
          file=sys.stderr, flush=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *requirements], check=True)
    found = find(cuda_version)
    if found is None:
        raise RuntimeError(f"installed {' '.join(requirements)} but found no usable nvcc in site-packages/nvidia")
    return found


def main(argv):
    if len(argv) != 1 or argv[0] not in ("find", "ensure"):
        print(__doc__, file=sys.stderr)
        return 2
    toolkit = find() if argv[0] == "find" else ensure()
    if toolkit:
        print(f"CUDA toolkit: {toolkit.source}, CUDA {toolkit.version}, {toolkit.home}", file=sys.stderr)
        print(toolkit.home)
    else:
        print("CUDA toolkit: none (torch is not a CUDA build, or no toolkit matches it)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
