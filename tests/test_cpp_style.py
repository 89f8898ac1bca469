"""House rules of csrc/: the code passes the repository's .clang-format (Google style, 120 columns)."""
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The major version the code was formatted with: others break some lines differently.
CLANG_FORMAT_MAJOR = 23


def test_csrc_passes_clang_format():
    clang_format = shutil.which("clang-format")
    if clang_format is None:
        pytest.skip(f"clang-format is not installed (pip install 'clang-format=={CLANG_FORMAT_MAJOR}.*')")
    version = subprocess.run([clang_format, "--version"], capture_output=True, text=True).stdout
    major = re.search(r"version (\d+)", version)
    if major is None or int(major.group(1)) != CLANG_FORMAT_MAJOR:
        pytest.skip(f"clang-format {CLANG_FORMAT_MAJOR} formats csrc/, this is: {version.strip()}")
    files = sorted(f for ext in ("cpp", "h", "cu", "cuh") for f in glob.glob(os.path.join(ROOT, "csrc", "**", f"*.{ext}"),
                                                                            recursive=True))
    assert files
    result = subprocess.run([clang_format, "--dry-run", "--Werror", *files], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, "run `clang-format -i` on csrc/:\n" + result.stderr[-4000:]
