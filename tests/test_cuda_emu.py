"""The CUDA emulator itself (dlkernels.cuda_emu, csrc/cuda_emu): faulty kernels are reported, schedules expose
missing barriers and waits, the counters count, the settings and their environment variables work, and the
CUDA kernels give the same results under every schedule and in float16 (the CUDA op tests run the emulated
kernels in the shared matrices of test_linear_act/test_conv2d/test_max_pool2d with backend "cuda_emu")."""
import os
import subprocess
import sys

import pytest
import torch

import dlkernels
from dlkernels import cuda_emu, reference
from conftest import REQUIRE_CUDA_EMU, assert_close_to_reference, make_input

pytestmark = pytest.mark.skipif(not cuda_emu.loaded() and not REQUIRE_CUDA_EMU,
                                reason=f"the CUDA emulator is not built ({cuda_emu.LOAD_ERROR})")


def test_loaded_when_required():
    assert cuda_emu.loaded(), cuda_emu.LOAD_ERROR


@pytest.mark.parametrize("fault,message", [
    ("exit_before_barrier", r"kernel exit_before_barrier_kernel, block \(0, 0, 0\), thread \(0, 0, 0\).*"
                            r"barrier divergence: this thread waits at __syncthreads\(\) at .*faults.cpp:\d+ but "
                            r"thread \(5, 0, 0\) has exited"),
    ("divergent_barriers", r"barrier divergence: this thread waits at __syncthreads\(\) at .*faults.cpp:(\d+) but "
                           r"thread \(1, 0, 0\) waits at __syncthreads\(\) at .*faults.cpp:(?!\1)\d+"),
    ("shuffle_missing_lane", r"__shfl_sync with mask 0xffffffff waits for lane 3, which has exited"),
    ("shuffle_not_in_mask", r"thread \(16, 0, 0\) \(warp 0, lane 16\): __shfl_sync with mask 0x0000ffff called by "
                            r"lane 16, which is not in the mask"),
    ("shared_past_end", r"kernel shared_past_end_kernel.*wrote shared memory at byte 256 of its 256-byte dynamic"),
    ("too_many_threads", r"invalid configuration argument: kernel exit_before_barrier_kernel launched with block "
                         r"\(2048, 1, 1\)"),
])
def test_faults_are_reported(fault, message):
    with pytest.raises(RuntimeError, match=message):
        cuda_emu.run_fault(fault)


def test_writes_outside_a_tensor_are_caught_in_checked_mode():
    cuda_emu.run_fault("write_past_end")  # not checked: nothing sees it
    with cuda_emu.checked():
        with pytest.raises(RuntimeError, match=r"after kernel write_past_end_kernel: a write outside a tensor: at "
                                               r"byte 400 of the 400-byte tensor"):
            cuda_emu.run_fault("write_past_end")
    assert not dlkernels._cuda_emu.checked()


def test_the_kernels_pass_in_checked_mode():
    with cuda_emu.checked():
        x = make_input(3, 2, 9, 7)
        w = make_input(5, 2, 3, 3, seed=1)
        x.requires_grad_()
        out = dlkernels.ops.conv2d(x, w, None, padding=1, activation="relu", backend="cuda_emu")
        pooled = dlkernels.ops.max_pool2d(out, 3, 2, 1, ceil_mode=True, backend="cuda_emu")
        lin = dlkernels.ops.linear_act(pooled.flatten(1), make_input(4, pooled[0].numel(), seed=2), None, "gelu",
                                       backend="cuda_emu")
        lin.sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


def test_a_missing_barrier_changes_the_result_under_some_schedule():
    results = {}
    for i, (mode, seed) in enumerate([("in_order", 0), ("reversed", 0), ("random", 1), ("random", 2)]):
        x = torch.randn(64, generator=torch.Generator().manual_seed(i))  # fresh data: no stale shared memory
        with cuda_emu.schedule(mode, seed):
            assert torch.equal(cuda_emu.run_fault("reverse", x)[:64], x.flip(0))
            x = x + 1
            results[mode, seed] = torch.equal(cuda_emu.run_fault("reverse_without_barrier", x)[:64], x.flip(0))
    assert not all(results.values()), results


def test_a_missing_wait_reads_data_that_has_not_landed():
    x = torch.arange(128, dtype=torch.float32)
    assert torch.equal(cuda_emu.run_fault("copy", x)[:128], x)
    assert cuda_emu.run_fault("copy_without_wait", x)[:128].isnan().all()  # the poison of shared memory


def test_counters():
    cuda_emu.reset_counters()
    cuda_emu.run_fault("copy", torch.arange(128, dtype=torch.float32))
    cuda_emu.run_fault("ldmatrix_conflicts")
    c = cuda_emu.counters()
    copy = c["copy_kernel<true>"]
    assert copy["launches"] == 1 and copy["blocks"] == 1 and copy["barriers"] == 1
    # 32 lanes x 16 contiguous bytes: four conflict-free phases, 512 bytes in 16 full sectors.
    assert copy["cp_async"] == 1 and copy["cp_async_wavefronts"] == copy["cp_async_ideal_wavefronts"] == 4
    assert copy["cp_async_global_bytes"] == 512 and copy["cp_async_global_sectors"] == 16
    ld = c["ldmatrix_conflicts_kernel"]
    assert ld["ldmatrix"] == 1 and ld["ldmatrix_ideal_wavefronts"] == 4 and ld["ldmatrix_wavefronts"] == 32
    cuda_emu.reset_counters()
    assert cuda_emu.counters() == {}


def test_counters_of_the_ptx_probes_are_conflict_free():
    cuda_emu.reset_counters()
    torch.ops.dlkernels_cuda_emu_probe.ldmatrix(torch.arange(256, dtype=torch.int16), 4, False)
    ld = cuda_emu.counters()["ldmatrix_probe_kernel<4, false>"]
    assert ld["ldmatrix_wavefronts"] == ld["ldmatrix_ideal_wavefronts"] == 4


@pytest.mark.parametrize("op", ["linear_act", "conv2d", "max_pool2d"])
def test_same_results_under_every_schedule(op):
    def run():
        x = make_input(2, 3, 8, 9, seed=3).requires_grad_()
        w = make_input(4, 3, 3, 3, seed=4).requires_grad_()
        if op == "linear_act":
            out = dlkernels.ops.linear_act(x.flatten(1), w.flatten(1).repeat(1, 8), None, "silu",
                                           backend="cuda_emu")
        elif op == "conv2d":
            out = dlkernels.ops.conv2d(x, w, None, padding=1, activation="tanh", backend="cuda_emu")
        else:
            out = dlkernels.ops.max_pool2d(x, 3, 2, 1, backend="cuda_emu")
        out.backward(make_input(*out.shape, seed=5))
        return [out.detach(), x.grad] + ([w.grad] if w.grad is not None else [])

    base = run()
    for mode, seed in [("reversed", 0), ("random", 11), ("random", 12)]:
        with cuda_emu.schedule(mode, seed):
            for a, b in zip(base, run()):
                assert torch.equal(a, b), (mode, seed)


def test_float16(monkeypatch):
    """The CUDA kernels take float16, which the CPU test matrices (float32/float64/bfloat16) leave out."""
    dtype = torch.float16
    x = make_input(5, 3, 7, 6, dtype=dtype, seed=1)
    w = make_input(4, 3, 3, 3, dtype=dtype, seed=2)
    b = make_input(4, dtype=dtype, seed=3)
    as64 = lambda t: t.double()  # noqa: E731
    out = dlkernels.ops.conv2d(x, w, b, padding=1, activation="gelu", backend="cuda_emu")
    assert_close_to_reference(out, reference.conv2d(as64(x), as64(w), as64(b), [1, 1], [1, 1], [1, 1], 1, "gelu"),
                              dtype, reference.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "gelu"))
    lx = make_input(6, 33, dtype=dtype, seed=4)
    lw = make_input(17, 33, dtype=dtype, seed=5)
    out = dlkernels.ops.linear_act(lx, lw, None, "sigmoid", backend="cuda_emu")
    assert_close_to_reference(out, reference.linear_act(as64(lx), as64(lw), None, "sigmoid"), dtype,
                              reference.linear_act(lx, lw, None, "sigmoid"))
    pooled, idx = dlkernels.ops.max_pool2d(x, 2, return_indices=True, backend="cuda_emu")
    ref, ref_idx = torch.nn.functional.max_pool2d(x.float(), 2, return_indices=True)
    assert torch.equal(pooled.float(), ref) and torch.equal(idx, ref_idx)
    # Gradients: each against the float64 reference's.
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    dlkernels.ops.conv2d(xg, wg, None, padding=1, activation="relu", backend="cuda_emu").sum().backward()
    x64, w64 = as64(x).requires_grad_(), as64(w).requires_grad_()
    reference.conv2d(x64, w64, None, [1, 1], [1, 1], [1, 1], 1, "relu").sum().backward()
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
    reference.conv2d(xt, wt, None, [1, 1], [1, 1], [1, 1], 1, "relu").sum().backward()
    assert_close_to_reference(xg.grad, x64.grad, dtype, xt.grad)
    assert_close_to_reference(wg.grad, w64.grad, dtype, wt.grad)


def test_auto_never_picks_the_emulator():
    assert dlkernels.ops.select_backend("linear_act", "auto", torch.device("cpu")) != "cuda_emu"
    assert all("cuda_emu" not in backends for ops in dlkernels.available_backends().values()
               for backends in ops.values())


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1", **env}, timeout=300)


def test_environment_variables():
    code = ("from dlkernels import cuda_emu, _cuda_emu; print(_cuda_emu.schedule(), _cuda_emu.checked())\n"
            "try:\n    cuda_emu.run_fault('write_past_end'); print('missed')\n"
            "except RuntimeError as e:\n    print('caught' if 'outside a tensor' in str(e) else e)\n")
    done = run_python(code, DLKERNELS_CUDA_EMU_SCHEDULE="random:42", DLKERNELS_CUDA_EMU_CHECKED="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["('random',", "42)", "True", "caught"]
    done = run_python(code, DLKERNELS_CUDA_EMU_SCHEDULE="reversed", DLKERNELS_CUDA_EMU_CHECKED="0")
    assert done.stdout.split() == ["('reversed',", "0)", "False", "missed"], done.stderr
    for name, value, error in [("DLKERNELS_CUDA_EMU_SCHEDULE", "sideways", "must be in_order, reversed, random"),
                               ("DLKERNELS_CUDA_EMU_CHECKED", "yes", "must be 0 or 1")]:
        done = run_python("import dlkernels.cuda_emu", **{name: value})
        assert done.returncode != 0 and error in done.stderr, done.stderr


def test_schedule_argument_checks():
    with pytest.raises(ValueError, match="schedule must be in_order, reversed or random"):
        cuda_emu.set_schedule("sideways")
    assert cuda_emu.parse_schedule("random:7") == ("random", 7)
    with pytest.raises(ValueError):
        cuda_emu.parse_schedule("in_order:3")
