"""The documented CPU switches: DLKERNELS_CPU_ISA=avx512|avx2|base forces the instruction set the kernels use
(and `python -m dlkernels info` shows the one in use), and DLKERNELS_CPU_HUGE_PAGES=0 turns the huge-page
advice off, DLKERNELS_CPU_WINOGRAD=0 sends 3x3 convolutions to the implicit GEMM. Each runs in a fresh process
(all are read once per process) that must pass the op tests.

The op runs select the cases that reach every vector path, forward and backward of every op: float32 and
float64 (bfloat16 runs the float32 GEMM kernels, and pools with the scalar loops), activations none and relu
(the others run the same GEMM kernels and differ only in the portable epilogue), every shape, layout and
stride, on the native backend (the switches are the native CPU kernels'; the Triton interpreter and the CUDA
emulator do not read them)."""
import os
import re
import subprocess
import sys
import time

import pytest

from dlkernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ["base", "avx2", "avx512"]  # lowest first
OP_TESTS = ["tests/test_linear_act.py", "tests/test_conv2d.py", "tests/test_max_pool2d.py",
            "tests/test_conv2d_maxpool.py", "tests/test_cpu_determinism.py"]
# Test ids name dtypes (conftest); "gelu" and "tanh" also deselect gelu_tanh, "emu" the CUDA emulator's tests.
SELECTION = "not triton and not emu and not bfloat16 and not (tanh or sigmoid or gelu or silu)"

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="dlkernels._C is not built")


def _env(**switches):
    """This process's environment without the switches under test, plus `switches`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DLKERNELS_CPU_ISA", "DLKERNELS_CPU_HUGE_PAGES", "DLKERNELS_CPU_WINOGRAD")}
    env.update(switches)
    return env


def _run(args, env, timeout=900):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    seconds = time.perf_counter() - start
    print(f"{' '.join(args[:3])} ({', '.join(f'{k}={v}' for k, v in env.items() if k.startswith('DLKERNELS_CPU'))}):"
          f" {seconds:.1f} s")
    return result, seconds


def _info(**switches):
    result, _ = _run(["-m", "dlkernels", "info"], _env(**switches))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _op_tests_pass(**switches):
    result, _ = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", SELECTION, *OP_TESTS],
                     _env(**switches))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def best_isa():
    """The level this CPU supports, as the extension detects it with no DLKERNELS_CPU_ISA set."""
    match = re.search(r"CPU ISA\s+(\w+)", _info())
    assert match, "`python -m dlkernels info` must show the CPU ISA"
    assert match.group(1) in LEVELS, match.group(1)
    return match.group(1)


def test_info_shows_the_defaults(best_isa):
    out = _info()
    assert "DLKERNELS_CPU_ISA=" not in out
    if sys.platform.startswith("linux"):
        assert re.search(r"huge pages\s+on\b", out), out


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_forced_isa_is_used_and_ops_pass(level, best_isa):
    if LEVELS.index(level) > LEVELS.index(best_isa):
        pytest.skip(f"this CPU supports {best_isa} at most, not {level}")
    out = _info(DLKERNELS_CPU_ISA=level)
    assert re.search(rf"CPU ISA\s+{level} \(DLKERNELS_CPU_ISA={level}\)", out), out
    if level == best_isa:
        return  # forcing the level the CPU has changes nothing: the op tests without the switch run these kernels
    _op_tests_pass(DLKERNELS_CPU_ISA=level)


def test_unknown_isa_is_ignored(best_isa):
    out = _info(DLKERNELS_CPU_ISA="sse9")
    assert re.search(rf"CPU ISA\s+{best_isa} \(DLKERNELS_CPU_ISA=sse9\)", out), out


@pytest.mark.slow
def test_huge_pages_off_and_ops_pass():
    out = _info(DLKERNELS_CPU_HUGE_PAGES="0")
    assert re.search(r"huge pages\s+off\b", out), out
    _op_tests_pass(DLKERNELS_CPU_HUGE_PAGES="0")


# Prints whether a batch of 3x3 convolutions equals, bit for bit, the same convolutions one image at a time
# (the implicit GEMM's result per image does not depend on the batch), and the batch's bytes as a hash: with
# Winograd on, the batch takes it (4 images of 24x24 are enough pixels at every ISA level) and rounds
# differently from the implicit GEMM.
_WINOGRAD_PROBE = """
import hashlib, torch, dlkernels
g = torch.Generator().manual_seed(0)
x, w = torch.randn(4, 32, 24, 24, generator=g), torch.randn(32, 32, 3, 3, generator=g)
batch = dlkernels.ops.conv2d(x, w, padding=1, backend="native")
alone = torch.cat([dlkernels.ops.conv2d(x[i:i + 1], w, padding=1, backend="native") for i in range(4)])
torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5 * alone.abs().max().item())
print("equal" if torch.equal(batch, alone) else "different", hashlib.sha1(batch.numpy().tobytes()).hexdigest())
"""


@pytest.mark.parametrize("level", LEVELS)
def test_winograd_off_takes_the_implicit_gemm(level, best_isa):
    if LEVELS.index(level) > LEVELS.index(best_isa):
        pytest.skip(f"this CPU supports {best_isa} at most, not {level}")
    on, _ = _run(["-c", _WINOGRAD_PROBE], _env(DLKERNELS_CPU_ISA=level))
    off, _ = _run(["-c", _WINOGRAD_PROBE], _env(DLKERNELS_CPU_ISA=level, DLKERNELS_CPU_WINOGRAD="0"))
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    off_equal, off_hash = off.stdout.split()
    assert off_equal == "equal"  # the implicit GEMM, image by image
    assert on.stdout.split()[1] != off_hash  # Winograd, when on, computed the batch


@pytest.mark.slow
def test_winograd_off_and_ops_pass():
    _op_tests_pass(DLKERNELS_CPU_WINOGRAD="0")
