"""The build: what was compiled, the fallback without the extension, `python -m dlkernels info`, the
CMake library, and the shape formulas the fake kernels share with C++."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import _ext, cuda_emu
from dlkernels.contract import CUSTOM_OPS, conv_output_size, pool_output_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_extension_loaded_with_cpu_kernels():
    assert _ext.loaded(), f"dlkernels._C did not load: {_ext.LOAD_ERROR}"
    for op in CUSTOM_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dlkernels::{op}", "CPU"), op


def test_cuda_kernels_registered_when_built_with_cuda():
    required = os.environ.get("DLKERNELS_REQUIRE_CUDA_BUILD") == "1"
    built = _ext.build_info().get("with_cuda", False)
    if required:
        assert built, "DLKERNELS_REQUIRE_CUDA_BUILD=1 but dlkernels._C was built without CUDA"
    if not built:
        pytest.skip("CPU-only build")
    assert _ext.build_info()["cuda_archs"], "a CUDA build must record its archs"
    for op in CUSTOM_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dlkernels::{op}", "CUDA"), op


def test_cuda_emulator_built_when_required():
    """CI builds the CPU emulator of the CUDA kernels (DLKERNELS_CUDA_EMU=1 through scripts/install.sh)."""
    if os.environ.get("DLKERNELS_REQUIRE_CUDA_BUILD") == "1" and not torch.cuda.is_available():
        assert cuda_emu.loaded(), cuda_emu.LOAD_ERROR
    if not cuda_emu.loaded():
        pytest.skip(f"the CUDA emulator is not built: {cuda_emu.LOAD_ERROR}")
    for op in CUSTOM_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{cuda_emu.NAMESPACE}::{op}", "CPU"), op


@pytest.mark.parametrize("value,expected", [("1", "the CUDA emulator dlkernels._cuda_emu"), ("0", None),
                                            ("yes", "DLKERNELS_CUDA_EMU must be 0 or 1")])
def test_cuda_emulator_switch(value, expected):
    """setup.py adds dlkernels._cuda_emu to the build for DLKERNELS_CUDA_EMU=1 only (--version builds nothing)."""
    done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DLKERNELS_CUDA_EMU": value, "DLKERNELS_CUDA": "0"}, timeout=300)
    output = done.stdout + done.stderr
    if expected is None:
        assert done.returncode == 0 and "_cuda_emu" not in output, output
    else:
        assert expected in output, output


def test_info_tells_the_truth():
    out = run_python("import sys; from dlkernels.__main__ import main; sys.exit(main(['info']))")
    build = _ext.build_info()
    assert "dlkernels._C loaded" in out
    assert f"built against  torch {build['torch_version']}" in out
    assert ("CUDA kernels   yes" in out) == build["with_cuda"]
    assert re.search(r"cpu\s+linear_act\s+native, .*reference", out), out


def test_import_without_extension_falls_back_with_one_warning():
    out = run_python("""
        import sys, warnings
        sys.modules["dlkernels._C"] = None  # makes the import of the extension fail
        import torch, dlkernels
        x, w = torch.randn(3, 4), torch.randn(2, 4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = dlkernels.ops.linear_act(x, w, activation="relu")
            dlkernels.ops.max_pool2d(torch.randn(1, 1, 4, 4), 2)
        assert len(caught) == 1 and "falls back" in str(caught[0].message), [str(c.message) for c in caught]
        torch.testing.assert_close(y, torch.relu(x @ w.t()))
        assert "native" not in dlkernels.available_backends()["cpu"]["linear_act"]
        try:
            dlkernels.ops.linear_act(x, w, backend="native")
        except RuntimeError as e:
            assert "pip install --no-build-isolation" in str(e), e
        else:
            raise AssertionError("native must fail without the extension")
        print("fallback ok")
    """)
    assert "fallback ok" in out


def test_build_records_the_torch_it_was_built_for():
    assert _ext.BUILT_FOR == torch.__version__ == _ext.build_info()["torch_version"]
    if _ext.build_info()["with_cuda"]:
        assert re.match(r"nvcc \d+\.\d+ \((system|pypi) toolkit, .+\)$", _ext.build_info()["nvcc"])


def test_extension_built_for_another_torch_is_not_loaded():
    """One clear message and the reference fallback, never an undefined-symbol traceback or a crash."""
    out = run_python("""
        import sys, types, warnings
        fake = types.ModuleType("dlkernels._build_info")
        fake.TORCH_VERSION = "1.0.0+other"
        sys.modules["dlkernels._build_info"] = fake
        import torch, dlkernels
        from dlkernels import _ext, cuda_emu
        from dlkernels.__main__ import info_lines
        assert not _ext.loaded() and "dlkernels._C" not in sys.modules
        expected = f"dlkernels._C was built for torch 1.0.0+other but torch {torch.__version__} is running"
        assert _ext.LOAD_ERROR == expected, _ext.LOAD_ERROR
        x, w = torch.randn(3, 4), torch.randn(2, 4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = dlkernels.ops.linear_act(x, w, activation="relu")
        assert len(caught) == 1 and expected in str(caught[0].message), [str(c.message) for c in caught]
        assert "build it against the torch you run" in str(caught[0].message)
        torch.testing.assert_close(y, torch.relu(x @ w.t()))
        assert any(expected in line for line in info_lines())
        print("guard ok")
    """)
    assert "guard ok" in out and "Traceback" not in out


def test_cuda_toolkit_search(tmp_path, monkeypatch):
    """scripts/cuda_toolkit.py: a system toolkit of torch's CUDA major version wins; others are passed over;
    the PyPI requirements follow torch's CUDA version."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import cuda_toolkit
    finally:
        sys.path.pop(0)

    def fake_toolkit(name, release):
        home = tmp_path / name
        (home / "bin").mkdir(parents=True)
        (home / "include").mkdir()
        (home / "include" / "cuda_runtime.h").write_text("")
        nvcc = home / "bin" / "nvcc"
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
        nvcc.chmod(0o755)
        return str(home)

    old, new = fake_toolkit("cuda-12", "12.8"), fake_toolkit("cuda-13", "13.0")
    monkeypatch.setattr(cuda_toolkit, "_system_candidates", lambda: iter([old, new]))
    monkeypatch.setattr(cuda_toolkit, "_pypi_candidates", lambda major: iter([]))
    assert cuda_toolkit.find("13.0") == cuda_toolkit.Toolkit(new, "13.0", "system")
    assert cuda_toolkit.find("12.8") == cuda_toolkit.Toolkit(old, "12.8", "system")
    assert cuda_toolkit.find("11.8") is None
    monkeypatch.setattr(cuda_toolkit, "_system_candidates", lambda: iter([old]))
    monkeypatch.setattr(cuda_toolkit, "_pypi_candidates", lambda major: iter([new]))
    assert cuda_toolkit.find("13.0") == cuda_toolkit.Toolkit(new, "13.0", "pypi")

    assert cuda_toolkit.pypi_requirements("13.0") == [
        "nvidia-cuda-nvcc==13.0.*", "nvidia-cuda-crt==13.0.*", "nvidia-nvvm==13.0.*", "nvidia-cuda-cccl==13.0.*"]
    with pytest.raises(RuntimeError, match="CUDA 13 and newer"):
        cuda_toolkit.pypi_requirements("12.8")

    lib = tmp_path / "cuda-13" / "lib"
    lib.mkdir()
    assert cuda_toolkit.runtime_library(new) is None
    (lib / "libcudart.so.13").write_text("")
    assert cuda_toolkit.runtime_library(new) == ":libcudart.so.13"
    (lib / "libcudart.so").write_text("")
    assert cuda_toolkit.runtime_library(new) == "cudart"


@pytest.mark.slow
def test_cmake_library_loads_in_a_fresh_process(tmp_path_factory):
    """CMakeLists.txt builds csrc/ into a library that torch.ops.load_library can load without Python."""
    build_dir = os.environ.get("DLKERNELS_CMAKE_BUILD_DIR") or str(tmp_path_factory.mktemp("cmake"))
    cmake_prefix = torch.utils.cmake_prefix_path
    # What is tested is that the library builds, links and loads, not its speed: unoptimised, without debug
    # information, it compiles in a fraction of a Release build's time.
    configure = ["cmake", "-S", ROOT, "-B", build_dir, f"-DCMAKE_PREFIX_PATH={cmake_prefix}",
                 "-DCMAKE_BUILD_TYPE=Check", "-DCMAKE_CXX_FLAGS=-O0 -g0", "-DDLKERNELS_WITH_CUDA=OFF"]
    for cmd in (configure, ["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2)]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    library = os.path.join(build_dir, "libdlkernels.so")
    out = run_python(f"""
        import torch
        torch.ops.load_library({library!r})
        x, w, b = torch.randn(3, 4), torch.randn(2, 4), torch.randn(2)
        y = torch.ops.dlkernels.linear_act(x, w, b, "relu", 0.0, 0.0)
        torch.testing.assert_close(y, torch.relu(torch.nn.functional.linear(x, w, b)))
        print("cmake library ok")
    """)
    assert "cmake library ok" in out


@pytest.mark.parametrize("size", [1, 2, 5, 8, 9, 17])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(1, 1, 0, 1), (2, 2, 0, 1), (3, 2, 1, 1), (2, 3, 1, 1),
                                                            (3, 1, 1, 2), (3, 3, 0, 2), (4, 2, 2, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_shape_formulas_match_torch(size, kernel, stride, padding, dilation, ceil_mode):
    x = torch.randn(1, 1, size, size)
    try:
        expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).shape[-1]
    except RuntimeError:
        expected = None  # torch rejects it: our formula must give an empty output
    ours = pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    assert ours == expected if expected is not None else ours < 1
    if dlkernels.ops._ext.loaded() and expected is not None:
        native = torch.ops.dlkernels.max_pool2d(x, [kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2, ceil_mode)
        assert native.shape[-1] == expected
    weight = torch.randn(1, 1, kernel, kernel)
    try:
        conv_expected = F.conv2d(x, weight, None, stride, padding, dilation).shape[-1]
    except RuntimeError:
        conv_expected = None
    conv_ours = conv_output_size(size, kernel, stride, padding, dilation)
    assert conv_ours == conv_expected if conv_expected is not None else conv_ours < 1
