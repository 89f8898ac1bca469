"""What backend="auto" runs for one call: the fastest of the native kernels and the PyTorch reference (and
Triton on a GPU), measured on this machine the first time a call signature is seen, and remembered on disk.

A call signature (a key, built by dlkernels.ops._auto) is what decides the speed of a call: the op, the
device, dtype, the tensors' shapes and x's strides (its layout), the op's arguments, the intra-op thread
count, and whether autograd records (and for which inputs), since a training call runs the backward as well.
Inference keys are timed on the forward, training keys on the forward and the backward of the inputs that
require grad, so that a kernel that is fast forward but slow backward is not picked for training.

Measuring uses inputs of the call's shapes filled from a private generator (the user's random stream is not
touched): the candidates are run in turn, alternately, for a few rounds, and the smallest median wins. The
results are kept in memory and in a JSON file per machine (CPU model, ISA, versions), so a later process
reads them instead of measuring again. No measuring, and the deterministic static rule (the `static` backend
the caller gives: native where this build has the op, else Triton on a GPU, else the reference; dlkernels.ops
sends CPU grouped convolutions that are not depthwise to the reference, unless their groups have 8 or 16 input
and output channels), when:

- DLKERNELS_AUTOTUNE=0;
- torch.compile traces the call (a measurement cannot run inside a graph; the static rule is a plain
  function of the shapes, which the compiled graph is specialised on anyway);
- a CUDA graph is being captured, a torch function or dispatch mode is active (a profiler, FLOP counter or
  fake-tensor mode must not see or pay for the measurement), or the inputs are not plain tensors with
  storage (meta, fake, subclasses).

The cache lives in DLKERNELS_CACHE_DIR, else $XDG_CACHE_HOME/dlkernels, else ~/.cache/dlkernels; a cache
that cannot be written is kept in memory only (one warning). `python -m dlkernels info` shows it;
`python -m dlkernels cache --clear` removes this machine's file.

This module is a leaf below dlkernels.ops: it imports torch and dlkernels._ext only; ops gives it the calls
to time.
"""
import hashlib
import itertools
import json
import os
import platform
import statistics
import threading
import time
import warnings
import weakref

import torch

from . import _ext

ENV_AUTOTUNE = "DLKERNELS_AUTOTUNE"
ENV_CACHE_DIR = "DLKERNELS_CACHE_DIR"

# Rounds of the measurement: at least MIN_ROUNDS, then more until BUDGET_S seconds have passed, at most
# MAX_ROUNDS. A key is measured once per machine, so a fraction of a second per new shape is affordable.
MIN_ROUNDS = 3
MAX_ROUNDS = 15
BUDGET_S = 0.25

_lock = threading.RLock()
# key tuple -> backend: what this process resolved, by measurement, the disk cache or the rules; dlkernels.ops
# also files each functional call's choice under a short key (op, signature, ops._memo_key), its next lookup
_choices = {}
_disk = None  # str(key) -> {"choice": backend, "us": {backend: median microseconds}}, loaded on first use
_warned_unwritable = False


class Memo(dict):
    """A caller's own map to choices this module remembered (a dlkernels.nn layer's, by the layer's call key),
    so that a layer's call skips building the whole key; clear() empties every one."""

    __slots__ = ("__weakref__",)


_memos = weakref.WeakValueDictionary()  # every live Memo, by a number (a dict is no set member)
_memo_numbers = itertools.count()


def memo():
    """A new Memo, emptied by clear()."""
    new = Memo()
    _memos[next(_memo_numbers)] = new
    return new


def enabled():
    """Whether auto measures (DLKERNELS_AUTOTUNE, default on)."""
    value = os.environ.get(ENV_AUTOTUNE, "1").strip().lower()
    if value in ("1", "on", "true", "yes", ""):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"dlkernels: {ENV_AUTOTUNE} must be 0 or 1, got {value!r}")


def cache_dir():
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dlkernels")


def cpu_model():
    """The CPU's model name (the benchmarks' results name their machine by it too)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    """What the measurements depend on besides the key: the CPU, the ISA the native kernels use, the
    versions. A change of any of them starts another cache file."""
    from . import __version__

    return {
        "cpu": cpu_model(),
        "cpu_isa": _ext._C.cpu_isa() if _ext.loaded() else None,
        "dlkernels": __version__,
        "torch": torch.__version__,
        "extension_built_for": _ext.build_info()["torch_version"] if _ext.loaded() else None,
    }


def cache_path():
    fingerprint = json.dumps(machine(), sort_keys=True)
    digest = hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"autotune-{digest}.json")


def _load():
    global _disk
    if _disk is None:
        _disk = {}
        try:
            with open(cache_path()) as f:
                data = json.load(f)
            if isinstance(data, dict) and isinstance(data.get("entries"), dict):
                _disk = data["entries"]
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: measured again
    return _disk


def _save(name, entry):
    """Adds one entry to the file, merged with what other processes wrote meanwhile."""
    global _warned_unwritable
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entries = {}
        try:
            with open(path) as f:
                entries = json.load(f).get("entries", {})
        except (OSError, ValueError, AttributeError):
            pass
        entries[name] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"machine": machine(), "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as error:
        if not _warned_unwritable:
            _warned_unwritable = True
            warnings.warn(f"dlkernels: cannot write the autotune cache {path} ({error}); measurements are kept "
                          f"for this process only (set {ENV_CACHE_DIR} to a writable folder)", RuntimeWarning,
                          stacklevel=2)


def entries():
    """This machine's cache: {key: {"choice": backend, "us": {backend: median us}}}."""
    with _lock:
        return dict(_load())


def clear():
    """Forgets every measurement, in memory and this machine's file. Returns the removed file, or None."""
    global _disk
    with _lock:
        _choices.clear()
        for held in list(_memos.values()):
            held.clear()
        _disk = {}
        path = cache_path()
        try:
            os.remove(path)
            return path
        except FileNotFoundError:
            return None


def _mode_active():
    return torch._C._len_torch_function_stack() > 0 or torch._C._len_torch_dispatch_stack() > 0


def _plain(tensors):
    return all(t is None or (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type != "meta")
               for t in tensors)


def _capturing(device):
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _plain_part(part):
    if isinstance(part, torch.Size):
        return tuple(part)
    if isinstance(part, torch.device) and part.type == "cuda":  # the card, not only its index
        return f"{part}:{torch.cuda.get_device_name(part)}"
    return part


def key_name(key):
    """The key as the cache file writes it."""
    return "|".join(str(_plain_part(part)) for part in key)


def choose(key, tensors, static, candidates, make_step):
    """The backend for `key`: remembered, else read from the cache file, else measured, else `static`.

    tensors: the call's tensors (to decide whether measuring is possible); candidates: backend names in order
    of preference on a tie; make_step(name): a function that runs one call with that backend on inputs of the
    call's shapes (and its backward for a training key), raising if the backend cannot run it."""
    choice = _choices.get(key)
    if choice is not None:
        return choice
    device = next(t.device for t in tensors if t is not None)
    if (not enabled() or torch.compiler.is_compiling() or _mode_active() or not _plain(tensors)
            or _capturing(device)):
        return static  # not remembered: measuring may be possible at a later call
    with _lock:
        name = key_name(key)
        entry = _load().get(name)
        if entry is None or entry.get("choice") not in candidates:
            entry = _measure(device, candidates, make_step)
            if entry is None:  # no backend ran the call: the op's own checks will say why
                return static
            _disk[name] = entry
            _save(name, entry)
        _choices[key] = entry["choice"]
        return entry["choice"]


def _measure(device, candidates, make_step):
    """{"choice": the fastest backend, "us": {backend: median microseconds}}, None when none could run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = {}
    for name in candidates:
        try:
            step = make_step(name)
            step()  # warm-up (first-call allocations, Triton compilation), and a check that it runs
            sync()
        except Exception:  # noqa: BLE001 - a backend that cannot run this call is not a candidate
            continue
        steps[name] = step
    if not steps:
        return None
    times = {name: [] for name in steps}
    start = time.perf_counter()
    for round_ in range(MAX_ROUNDS):
        for name, step in steps.items():  # alternated, so that each sees the same load
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - t0)
        if round_ + 1 >= MIN_ROUNDS and time.perf_counter() - start > BUDGET_S:
            break
    medians = {name: statistics.median(ts) * 1e6 for name, ts in times.items()}
    choice = min(steps, key=lambda name: (medians[name], candidates.index(name)))
    return {"choice": choice, "us": {name: round(us, 2) for name, us in medians.items()}}
