"""The source distribution holds everything a wheel is built from and everything the README's commands use.
(CI also builds a wheel from it and installs that into a fresh virtualenv: see .ci/run.)"""
import glob
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


@pytest.mark.slow
def test_sdist_is_complete(tmp_path):
    pytest.importorskip("build", reason="pip install '.[test]' brings the 'build' package")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), ROOT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = glob.glob(str(tmp_path / "dlkernels-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        top = os.path.basename(sdist)[: -len(".tar.gz")]
        names = {name[len(top) + 1:] for name in tar.getnames() if name.startswith(top + "/")}
    expected = ["README.md", "LICENSE", "CMakeLists.txt", "setup.py", "pyproject.toml", "MANIFEST.in",
                "scripts/install.sh", "scripts/cuda_toolkit.py", "scripts/check_install.py", "scripts/gpu_check.sh",
                ".ci/run"]
    for pattern in ("csrc/**/*.h", "csrc/**/*.cuh", "csrc/**/*.cpp", "csrc/**/*.cu", "dlkernels/**/*.py",
                    "tests/*.py", "examples/*.py", "benchmarks/*.py"):
        files = tracked(pattern)
        assert files, pattern
        expected += files
    missing = [f for f in expected if f not in names and f != "dlkernels/_build_info.py"]
    assert not missing, f"the sdist lacks {missing}"
    assert "dlkernels/_build_info.py" not in names, "the sdist must not carry a build's record"
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))], "the sdist must not carry build outputs"
    assert "License-Expression: BSD-3-Clause" in tar_member(sdist, top + "/PKG-INFO")


def tar_member(path, name):
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read().decode()
