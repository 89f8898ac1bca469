"""The CPU emulator of the CUDA kernels: a test tool, not a backend for users.

dlkernels._cuda_emu is the same csrc/cuda/*.cu source as the CUDA kernels, compiled by the host compiler
against a small runtime (csrc/cuda_emu/) that runs each block's threads as fibers: __syncthreads really waits,
warp shuffles, votes, ldmatrix, mma.sync and cp.async follow the PTX rules, barrier divergence and bad warp
masks are errors naming kernel, block and thread. It is built when DLKERNELS_CUDA_EMU=1 (scripts/install.sh
sets it) and registers the ops under torch.ops.dlkernels_cuda_emu, for CPU tensors: dlkernels.ops runs them
with backend="cuda_emu", which "auto" never picks.

Settings (also read from the environment when the module loads):
  schedule(mode, seed)   DLKERNELS_CUDA_EMU_SCHEDULE=in_order|reversed|random[:seed]: the order in which a
                         block's threads run between two synchronisation points
  checked()              DLKERNELS_CUDA_EMU_CHECKED=1: guard bands around every CPU tensor allocated while
                         on, checked after each launch (writes outside a tensor are errors)
  counters()             per kernel: launches, blocks, barriers, mma and ldmatrix instructions, shared-memory
                         wavefronts against the conflict-free count, cp.async global sectors against bytes
"""
import contextlib
import importlib
import os

import torch

from . import _ext, contract

NAMESPACE = "dlkernels_cuda_emu"
PROBE_NAMESPACE = "dlkernels_cuda_emu_probe"
SCHEDULES = ("in_order", "reversed", "random")

_emu = None
LOAD_ERROR = _ext.version_mismatch(_ext.BUILT_FOR, torch.__version__)
if LOAD_ERROR is None:
    try:
        _emu = importlib.import_module("dlkernels._cuda_emu")
    except ImportError as error:
        LOAD_ERROR = f"{error} (build it with DLKERNELS_CUDA_EMU=1, e.g. ./scripts/install.sh)"


def loaded():
    return _emu is not None


def unavailable_reason(device):
    """None when the emulated CUDA kernels can run on `device` (CPU tensors only), else why not."""
    if _emu is None:
        return f"the CUDA emulator dlkernels._cuda_emu is not built ({LOAD_ERROR})"
    if torch.device(device).type != "cpu":
        return "the CUDA emulator runs on CPU tensors"
    return None


def _require():
    if _emu is None:
        raise RuntimeError(f"dlkernels: the CUDA emulator is not available: {LOAD_ERROR}")
    return _emu


def parse_schedule(text):
    """(mode, seed) from "in_order", "reversed", "random" or "random:<seed>"."""
    mode, _, seed = text.strip().partition(":")
    if mode not in SCHEDULES or (seed and (mode != "random" or not seed.isdigit())):
        raise ValueError(
            f"DLKERNELS_CUDA_EMU_SCHEDULE must be in_order, reversed, random or random:<seed>, got {text!r}"
        )
    return mode, int(seed or 0)


def set_schedule(mode, seed=0):
    _require().set_schedule(mode, seed)


def get_schedule():
    return tuple(_require().schedule())


@contextlib.contextmanager
def schedule(mode, seed=0):
    """Runs the block's threads in this order between synchronisation points, inside the `with`."""
    previous = get_schedule()
    set_schedule(mode, seed)
    try:
        yield
    finally:
        set_schedule(*previous)


@contextlib.contextmanager
def checked():
    """The checked mode inside the `with` (tensors allocated inside get guard bands)."""
    emu = _require()
    previous = emu.checked()
    emu.set_checked(True)
    try:
        yield
    finally:
        emu.set_checked(previous)


def counters():
    return dict(_require().counters())


def reset_counters():
    _require().reset_counters()


def run_fault(name, x=None):
    """Runs one of the faulty kernels of csrc/cuda_emu/faults.cpp (tests of the emulator itself)."""
    return _require().run_fault(name, torch.empty(0) if x is None else x)


if _emu is not None:
    contract.register(NAMESPACE)
    set_schedule(*parse_schedule(os.environ.get("DLKERNELS_CUDA_EMU_SCHEDULE", "in_order")))
    _checked_env = os.environ.get("DLKERNELS_CUDA_EMU_CHECKED", "0")
    if _checked_env not in ("0", "1"):
        raise ValueError(f"DLKERNELS_CUDA_EMU_CHECKED must be 0 or 1, got {_checked_env!r}")
    _emu.set_checked(_checked_env == "1")
