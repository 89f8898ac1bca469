"""Shared test helpers: devices, backends, input makers and the one tolerance table."""
import contextlib
import itertools
import os
import tempfile

import pytest
import torch

# Without a GPU the Triton kernels run under the interpreter, which must be chosen before any @triton.jit
# function is defined, i.e. before dlkernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# backend="auto" takes its static rules in the tests (measuring every new shape would cost seconds per test
# file, and choices that depend on the machine's load would make the tests vary); tests/test_autotune.py
# turns measuring on where it tests it. The cache goes to a folder of this run, never the user's.
os.environ["DLKERNELS_AUTOTUNE"] = "0"
os.environ["DLKERNELS_CACHE_DIR"] = os.path.join(
    tempfile.gettempdir(), f"dlkernels-test-cache-{os.getpid()}")

import dlkernels  # noqa: E402
from dlkernels import _ext, cuda_emu  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# CI (DLKERNELS_REQUIRE_CUDA_BUILD=1) requires the CUDA kernels, and on a machine without a GPU their CPU
# emulator too (on a GPU the real kernels are tested; scripts/gpu_check.sh does not build the emulator).
REQUIRE_CUDA_BUILD = os.environ.get("DLKERNELS_REQUIRE_CUDA_BUILD") == "1"
REQUIRE_CUDA_EMU = REQUIRE_CUDA_BUILD and not torch.cuda.is_available()
# Backends under test: every one besides the reference itself. "cuda_emu" runs the CUDA kernels' source on
# CPU tensors in the emulator (dlkernels.cuda_emu): the CUDA tests of a machine without a GPU.
BACKENDS = ["native", "triton"] + (["cuda_emu"] if cuda_emu.loaded() or REQUIRE_CUDA_EMU else [])
# Backends that run here under an interpreter, hundreds of times slower than compiled code: the Triton
# interpreter (no GPU) and the CUDA emulator. backend_matrix gives them all pairs of a large test matrix
# instead of its whole product.
INTERPRETED = {"cuda_emu"} | (set() if torch.cuda.is_available() else {"triton"})
# The custom-op namespaces under test (one per backend that runs through the dispatcher): the tests of the
# op contract (opcheck, torch.compile) run over all of them.
NAMESPACES = [namespace for backend, namespace in dlkernels.ops.NAMESPACES.items() if backend in BACKENDS]
BACKEND_OF_NAMESPACE = {namespace: backend for backend, namespace in dlkernels.ops.NAMESPACES.items()}
# The first activations, which the full test matrices run over; the later ones (relu6 ... mish) run over a
# shape or two with NEW_ACTIVATION_CASES, each at torch's default parameters and the parametrised ones at
# other values too (activation_params as dlkernels.ops takes them).
BASE_ACTIVATIONS = ("none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu")
NEW_ACTIVATIONS = tuple(a for a in dlkernels.ACTIVATIONS if a not in BASE_ACTIVATIONS)
NEW_ACTIVATION_CASES = [pytest.param(a, None, id=a) for a in NEW_ACTIVATIONS] + [
    pytest.param("leaky_relu", {"negative_slope": 0.2}, id="leaky_relu-0.2"),
    pytest.param("leaky_relu", {"negative_slope": 0.0}, id="leaky_relu-0"),
    pytest.param("hardtanh", {"min_val": -0.5, "max_val": 2.0}, id="hardtanh-(-0.5,2)"),
    pytest.param("elu", {"alpha": 0.7}, id="elu-0.7"),
]
# Dtypes per device: the CPU kernels do float32, float64 and bfloat16 at least; CUDA adds float16.
DTYPES = {"cpu": [torch.float32, torch.float64, torch.bfloat16], "cuda": [torch.float32, torch.float16, torch.bfloat16]}

# Tolerances against the float64 reference, keyed by dtype and op kind. "reduce" ops (GEMM, conv) sum many
# products; "exact" ops (max pooling) select values and must match bit for bit.
TOLERANCE = {
    (torch.float64, "reduce"): dict(atol=1e-10, rtol=1e-9),
    (torch.float32, "reduce"): dict(atol=1e-4, rtol=1e-4),
}
# For float16/bfloat16 GEMM and conv the bound is relative to PyTorch's own error in that dtype: the kernel
# may be off by at most LOW_PRECISION_FACTOR times torch's error (plus one unit in the last place).
LOW_PRECISION_FACTOR = 2.0


def all_pairs(sizes):
    """Rows of value indices, one per axis of the given sizes, in which every pair of values of two different
    axes occurs at least once (a covering array of strength 2): a row per pair of the two largest axes, each
    filled greedily with the values of the other axes that cover the most pairs not yet covered (the least
    used first on ties), then rows for any pairs left. Deterministic."""
    n = len(sizes)
    if n < 2:
        return [(i,) for i in range(sizes[0])] if n else [()]
    order = sorted(range(n), key=lambda a: -sizes[a])
    uncovered = {(a, i, b, j) for a in range(n) for b in range(a + 1, n)
                 for i in range(sizes[a]) for j in range(sizes[b])}
    used = [[0] * size for size in sizes]
    rows = []

    def add(fixed):
        row = dict(fixed)
        for a in order:
            if a not in row:
                new_pairs = lambda v: sum((min(a, b), v if a < b else row[b], max(a, b), row[b] if a < b else v)
                                          in uncovered for b in row)
                row[a] = max(range(sizes[a]), key=lambda v: (new_pairs(v), -used[a][v], -v))
        for a in range(n):
            used[a][row[a]] += 1
            for b in range(a + 1, n):
                uncovered.discard((a, row[a], b, row[b]))
        rows.append(tuple(row[a] for a in range(n)))

    first, second = order[0], order[1]
    for i in range(sizes[first]):
        for j in range(sizes[second]):
            add({first: i, second: j})
    while uncovered:
        a, i, b, j = min(uncovered)
        add({a: i, b: j})
    return rows


def pytest_make_parametrize_id(config, val, argname):
    """Dtypes by name in test ids (float32, bfloat16), as -k selections name them."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    return None


def _value_id(name, value, index):
    dtype_id = pytest_make_parametrize_id(None, value, name)
    if dtype_id is not None:
        return dtype_id
    if isinstance(value, (str, bool, int, float)):
        return str(value)
    return f"{name}{index}"


def backend_matrix(*axes, backends=BACKENDS):
    """Arguments for @pytest.mark.parametrize: "backend" and each axis, an (argnames, values) or (argnames,
    values, ids) tuple (several comma-separated argnames take tuples of values). Compiled backends run the
    whole product of the axes; INTERPRETED ones all its pairs (all_pairs): every value of an axis still meets
    every value of every other axis, in a fraction of the tests (a kernel's paths are chosen by one or two of
    these axes at a time: dtype and layout, or shape and activation)."""
    names, values, ids = [], [], []
    for name, vals, *given in axes:
        vals = list(vals)
        if given:
            axis_ids = list(given[0])
        elif "," in name:
            axis_ids = ["-".join(_value_id(n.strip(), v, i) for n, v in zip(name.split(","), value))
                        for i, value in enumerate(vals)]
        else:
            axis_ids = [_value_id(name, value, i) for i, value in enumerate(vals)]
        names.append(name)
        values.append(vals)
        ids.append(axis_ids)
    params = []
    sizes = [len(v) for v in values]
    for backend in backends:
        rows = all_pairs(sizes) if backend in INTERPRETED else itertools.product(*map(range, sizes))
        for row in rows:
            flat = [backend]
            for name, vals, i in zip(names, values, row):
                flat.extend(vals[i] if "," in name else [vals[i]])
            params.append(pytest.param(*flat, id="-".join([backend] + [ids[a][i] for a, i in enumerate(row)])))
    return ",".join(["backend"] + names), params


def device_params():
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES]


def namespace_params():
    """NAMESPACES as test parameters; the Triton one is slow under the interpreter."""
    return [pytest.param(n, marks=pytest.mark.slow) if n == "dlkernels_triton" else n for n in NAMESPACES]


def namespace_device(namespace):
    """A device the namespace's kernels run on here: Triton runs on the GPU when there is one (CPU tensors go
    through the interpreter on GPU-less machines only); the native kernels always have the CPU."""
    return "cuda" if namespace == "dlkernels_triton" and torch.cuda.is_available() else "cpu"


def device_dtype_params():
    return [(d, t) for d in DEVICES for t in DTYPES[d]]


def require_backend(backend, device):
    """Fails (never skips) when a backend under test cannot run on the device, except Triton on CPU tensors
    on a GPU machine: the interpreter covers those on machines without a GPU."""
    if backend == "triton" and device == "cpu" and torch.cuda.is_available():
        pytest.skip("Triton runs on the GPU here; CPU tensors go through the Triton interpreter on GPU-less machines")
    if backend == "cuda_emu":
        if device != "cpu":
            pytest.skip("the CUDA emulator runs on CPU tensors; on the GPU the real kernels are tested")
        if not cuda_emu.loaded():
            (pytest.fail if REQUIRE_CUDA_EMU else pytest.skip)(
                f"the CUDA emulator did not build or load ({cuda_emu.LOAD_ERROR})")
        return
    if backend == "native" and not _ext.has_kernel("linear_act", device):
        pytest.fail(
            f"the native backend has no {device} kernels: the extension did not build or load ({_ext.LOAD_ERROR})"
        )
    if backend not in dlkernels.available_backends()[device]["linear_act"]:
        pytest.fail(f"backend {backend!r} cannot run on {device}")


def require_native(device):
    require_backend("native", device)


def require_namespace(namespace, device):
    require_backend(BACKEND_OF_NAMESPACE[namespace], device)


def make_input(*shape, dtype=torch.float32, device="cpu", seed=0, low=0.1):
    """Random values away from zero (so relu/max ties at 0 do not decide a test), both signs."""
    g = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(*shape, generator=g, dtype=torch.float64) * (1 - low) + low
    sign = torch.randint(0, 2, shape, generator=g).to(torch.float64) * 2 - 1
    return (magnitude * sign).to(device=device, dtype=dtype)


def assert_close_to_reference(actual, expected64, dtype, torch_same_dtype=None, kind="reduce"):
    """actual (in dtype) against the float64 reference; torch_same_dtype is PyTorch's own result in dtype,
    which sets the bound for float16/bfloat16."""
    assert actual.dtype == dtype, f"result dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected64.shape, f"shape {tuple(actual.shape)}, expected {tuple(expected64.shape)}"
    actual64 = actual.detach().to("cpu", torch.float64)
    expected64 = expected64.detach().to("cpu", torch.float64)
    if (dtype, kind) in TOLERANCE:
        torch.testing.assert_close(actual64, expected64, **TOLERANCE[(dtype, kind)])
        return
    assert torch_same_dtype is not None, "low-precision checks need torch's own result in that dtype"
    torch_error = (
        (torch_same_dtype.detach().to("cpu", torch.float64) - expected64).abs().max().item()
        if expected64.numel()
        else 0.0
    )
    ulp = torch.finfo(dtype).eps * max(1.0, expected64.abs().max().item() if expected64.numel() else 1.0)
    error = (actual64 - expected64).abs().max().item() if expected64.numel() else 0.0
    bound = LOW_PRECISION_FACTOR * torch_error + ulp
    assert error <= bound, (
        f"max error {error:.3g} > {bound:.3g} ({LOW_PRECISION_FACTOR}x torch's own error {torch_error:.3g} + 1 ulp)"
    )


@contextlib.contextmanager
def tf32_flags(matmul=None, cudnn=None):
    """Sets torch's TF32 flags for a block and restores them, by hand: pytest's monkeypatch cannot restore
    torch.backends.cuda.matmul.allow_tf32 (it lives behind a module __getattr__; pytest 9.2 deletes it)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        if matmul is not None:
            torch.backends.cuda.matmul.allow_tf32 = matmul
        if cudnn is not None:
            torch.backends.cudnn.allow_tf32 = cudnn
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 tests compare against float64: TF32 would make them flaky, so keep it off."""
    with tf32_flags(matmul=False, cudnn=False):
        yield


@pytest.fixture(autouse=True, scope="session")
def _global_flags_unchanged():
    """No test may leave torch's global flags changed for the tests after it."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads()
    yield
    after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads()
    assert after == before, f"torch's global flags (tf32 matmul, tf32 cudnn, threads) changed: {before} -> {after}"


@pytest.fixture
def one_thread():
    """Small models: one thread is as fast, and with 2 threads OpenMP waits at every op (10-100x slower)
    while other processes keep the cores busy. Restores torch's setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _emulated_cuda_checked(request):
    """The tests of the emulated CUDA kernels run in the emulator's checked mode: a kernel that writes outside
    the tensors it was handed fails its test (guard bands around every tensor the test allocates)."""
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    emulated = params.get("backend") == "cuda_emu" or params.get("namespace") == cuda_emu.NAMESPACE
    if not emulated or not cuda_emu.loaded():
        yield
        return
    with cuda_emu.checked():
        yield
