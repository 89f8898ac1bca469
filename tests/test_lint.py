"""House rules, checked with the tools pinned in the test extras (pip install '.[test]'): Python passes ruff
with pyproject.toml's config, csrc/ passes the repository's .clang-format (Google style, 120 columns). A
missing or other-version tool fails the test: other versions format some lines differently."""
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The major version the code was formatted with.
CLANG_FORMAT_MAJOR = 23


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install '.[test]' (pyproject.toml pins the version)")
    return path


def test_python_passes_ruff():
    result = subprocess.run([tool("ruff"), "check", "--no-cache", ROOT], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, "ruff check:\n" + result.stdout[-4000:] + result.stderr[-2000:]


def test_csrc_passes_clang_format():
    clang_format = tool("clang-format")
    version = subprocess.run([clang_format, "--version"], capture_output=True, text=True).stdout
    major = re.search(r"version (\d+)", version)
    assert major and int(major.group(1)) == CLANG_FORMAT_MAJOR, (
        f"csrc/ is formatted with clang-format {CLANG_FORMAT_MAJOR}, this is: {version.strip()}")
    files = sorted(
        f
        for ext in ("cpp", "h", "cu", "cuh")
        for f in glob.glob(os.path.join(ROOT, "csrc", "**", f"*.{ext}"), recursive=True)
    )
    assert files
    result = subprocess.run([clang_format, "--dry-run", "--Werror", *files], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, "run `clang-format -i` on csrc/:\n" + result.stderr[-4000:]
