"""backend="auto" per call signature (dlkernels.autotune): measured once per machine, remembered on disk,
static rules where it cannot or must not measure, the user's random stream and results untouched."""
import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import _ext, autotune
from dlkernels.ops import MIXED, _auto

needs_native = pytest.mark.skipif(not _ext.has_kernel("conv2d", "cpu"), reason="needs the native CPU kernels")


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Measuring on, a cache folder of this test, nothing remembered from other tests."""
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "1")
    monkeypatch.setenv(autotune.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(autotune, "_disk", None)
    monkeypatch.setattr(autotune, "_choices", {})
    return tmp_path


def sleeper(seconds):
    return lambda: time.sleep(seconds)


def test_choose_measures_the_fastest_and_remembers_it_on_disk(tuning, monkeypatch):
    x = torch.zeros(2)
    key = ("test_op", "cpu", 1)
    slow = {"native": 0.004, "reference": 0.0}
    assert autotune.choose(key, (x,), "native", ("native", "reference"), lambda b: sleeper(slow[b])) == "reference"
    (path,) = tuning.iterdir()
    assert path == type(path)(autotune.cache_path())
    data = json.loads(path.read_text())
    entry = data["entries"][autotune.key_name(key)]
    assert entry["choice"] == "reference" and entry["us"]["native"] > entry["us"]["reference"]
    assert data["machine"] == autotune.machine()

    # A new process (nothing in memory) reads the file instead of measuring.
    monkeypatch.setattr(autotune, "_disk", None)
    monkeypatch.setattr(autotune, "_choices", {})

    def no_measuring(backend):
        raise AssertionError("measured again")

    assert autotune.choose(key, (x,), "native", ("native", "reference"), no_measuring) == "reference"


def test_a_backend_that_cannot_run_is_no_candidate(tuning):
    def make(backend):
        if backend == "native":
            raise RuntimeError("cannot run this")
        return sleeper(0)

    assert autotune.choose(("k",), (torch.zeros(1),), "native", ("native", "reference"), make) == "reference"
    # No backend runs it: the static choice, nothing remembered (the op's own checks will raise).
    failing = lambda backend: (_ for _ in ()).throw(RuntimeError("no"))  # noqa: E731
    assert autotune.choose(("k2",), (torch.zeros(1),), "native", ("native", "reference"), failing) == "native"
    assert autotune.key_name(("k2",)) not in autotune.entries()


def test_switched_off_gives_the_static_rule_and_writes_nothing(tuning, monkeypatch):
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "0")
    make = lambda backend: (_ for _ in ()).throw(AssertionError("measured"))  # noqa: E731
    assert autotune.choose(("k",), (torch.zeros(1),), "native", ("native", "reference"), make) == "native"
    assert list(tuning.iterdir()) == []
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "maybe")
    with pytest.raises(ValueError, match="DLKERNELS_AUTOTUNE"):
        autotune.enabled()


def test_no_measuring_under_a_dispatch_mode_or_for_meta_tensors(tuning):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    make = lambda backend: (_ for _ in ()).throw(AssertionError("measured"))  # noqa: E731
    with Count():
        assert autotune.choose(("k",), (torch.zeros(1),), "native", ("native", "reference"), make) == "native"
    meta = torch.zeros(2, device="meta")
    assert autotune.choose(("k",), (meta,), "native", ("native", "reference"), make) == "native"
    assert autotune.entries() == {}


def test_unwritable_cache_warns_once_and_keeps_the_choice_in_memory(tuning, monkeypatch):
    blocker = tuning / "file"
    blocker.write_text("")
    monkeypatch.setenv(autotune.ENV_CACHE_DIR, str(blocker / "below-a-file"))
    monkeypatch.setattr(autotune, "_warned_unwritable", False)
    with pytest.warns(RuntimeWarning, match="cannot write the autotune cache"):
        assert autotune.choose(("k",), (torch.zeros(1),), "native", ("native", "reference"),
                               lambda b: sleeper(0.003 if b == "native" else 0)) == "reference"
    assert autotune._choices[("k",)] == "reference"


def conv_args():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=g)
    w = torch.randn(6, 4, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    return x, w, b


@needs_native
def test_auto_measures_per_signature_and_direction_without_touching_the_rng(tuning, one_thread):
    x, w, b = conv_args()
    state = torch.get_rng_state()
    out = dlkernels.ops.conv2d(x, w, b, padding=1, activation="relu")
    assert torch.equal(torch.get_rng_state(), state), "measuring drew from the user's random stream"
    torch.testing.assert_close(out, F.relu(F.conv2d(x, w, b, padding=1)))
    assert len(autotune.entries()) == 1
    dlkernels.ops.conv2d(x, w, b, padding=1, activation="relu")  # the same signature: nothing new
    assert len(autotune.entries()) == 1
    # Training (w requires grad) is another signature, timed with its backward; so is another stride.
    wg = w.clone().requires_grad_()
    dlkernels.ops.conv2d(x, wg, b, padding=1, activation="relu").sum().backward()
    dlkernels.ops.conv2d(x, w, b, stride=2, padding=1, activation="relu")
    names = sorted(autotune.entries())
    assert len(names) == 3
    assert sum(name.endswith("(False, True, False)") for name in names) == 1
    for name, entry in autotune.entries().items():
        # Training calls also time the native forward with PyTorch's backward (dlkernels.mixed).
        expected = {"native", "reference"} | ({MIXED} if name.endswith("(False, True, False)") else set())
        assert set(entry["us"]) == expected and entry["choice"] in entry["us"]


@needs_native
def test_each_choice_computes_the_same(tuning, one_thread):
    """Whatever auto chose, the result and gradients are those of the op (forced both ways)."""
    x, w, b = conv_args()
    expected = F.silu(F.conv2d(x, w, b, stride=2))
    for forced in ("native", "reference"):
        autotune._choices.clear()
        key_of = {}

        def force(key, tensors, static, candidates, make_step):
            key_of[key] = forced
            autotune._choices[key] = forced
            return forced

        with pytest.MonkeyPatch.context() as m:
            m.setattr(autotune, "choose", force)
            out = dlkernels.ops.conv2d(x, w, b, stride=2, activation="silu")
        assert key_of, "auto did not ask the autotuner"
        torch.testing.assert_close(out, expected)


def forcing(choice, asked):
    """A stand-in for autotune.choose that returns `choice` where it is a candidate (else the static rule) and
    records the candidates of each key."""
    def force(key, tensors, static, candidates, make_step):
        asked[key] = candidates
        chosen = choice if choice in candidates else static
        make_step(chosen)()  # the step auto would time runs too
        autotune._choices[key] = chosen
        return chosen
    return force


@needs_native
@pytest.mark.parametrize("activation", ["none", "relu", "sigmoid", "tanh"])
def test_native_forward_with_torch_backward(tuning, one_thread, monkeypatch, activation):
    """The training choice MIXED: results and the gradients of every input as the reference computes them, for
    conv2d (strided, dilated, grouped) and linear_act (3-D input), functional and in a converted model; never a
    candidate of inference calls or of activations whose derivative needs the pre-activation."""
    asked = {}
    monkeypatch.setattr(autotune, "choose", forcing(MIXED, asked))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    xl = torch.randn(3, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    wl = torch.randn(4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    cases = [
        (lambda: dlkernels.ops.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                                      activation=activation),
         lambda: dlkernels.reference.conv2d(x, w, b, (2, 1), 1, (1, 2), 2, activation), (x, w, b)),
        (lambda: dlkernels.ops.linear_act(xl, wl, None, activation),
         lambda: dlkernels.reference.linear_act(xl, wl, None, activation), (xl, wl)),
    ]
    for run, ref, inputs in cases:
        out, expected = run(), ref()
        grad = torch.randn(expected.shape, dtype=expected.dtype, generator=g)
        torch.testing.assert_close(out, expected)
        for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
            torch.testing.assert_close(got, want)
    assert len(asked) == 2 and all(MIXED in candidates for candidates in asked.values())

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    converted, report = dlkernels.convert(model, return_report=True)
    xm = torch.randn(2, 3, 4, 4)
    converted(xm).sum().backward()
    model(xm).sum().backward()
    for (name, p), q in zip(converted.named_parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert {ran["training"] for ran in report.implementations().values()} == {MIXED}

    asked.clear()
    with torch.no_grad():
        dlkernels.ops.conv2d(x, w, b, groups=2, activation=activation)
    dlkernels.ops.conv2d(x, w, b, groups=2, activation="silu")
    assert len(asked) == 2 and not any(MIXED in candidates for candidates in asked.values())


@needs_native
def test_converted_model_reports_what_each_layer_ran(tuning, one_thread):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    converted, report = dlkernels.convert(model, return_report=True)
    x = torch.randn(2, 3, 8, 8)
    assert report.implementations() == {}
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))
    converted(x).sum().backward()
    ran = report.implementations()
    assert set(ran) == {"0", "2", "4"}
    for modes in ran.values():
        assert set(modes) == {"inference", "training"} and set(modes.values()) <= {"native", "reference"}
    assert "runs       0: inference" in str(report)
    assert report.to_dict()["implementations"] == ran
    # The choices are those the cache holds (one per layer and direction).
    assert len(autotune.entries()) == 6


@needs_native
def test_compiled_model_takes_the_static_rule(tuning, one_thread):
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    converted = dlkernels.convert(model)
    x = torch.randn(1, 3, 10, 10)
    compiled = torch.compile(converted, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert autotune.entries() == {}, "measured inside a traced graph"


def test_explicit_backends_are_never_tuned(tuning):
    x, w, b = conv_args()
    dlkernels.ops.conv2d(x, w, b, backend="reference")
    assert autotune.entries() == {}


@needs_native
def test_auto_keys_hold_the_signature(tuning):
    """_auto's key: tensors' shapes and strides, the op's arguments, threads and the autograd flags."""
    seen = []

    def record(key, tensors, static, candidates, make_step):
        seen.append(key)
        return static

    x = torch.zeros(1, 2, 4, 4)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(autotune, "choose", record)
        _auto("conv2d", "native", x, None, None, ("a",), lambda *args: None)
        _auto("conv2d", "native", x.to(memory_format=torch.channels_last), None, None, ("a",), lambda *args: None)
        _auto("conv2d", "native", x.requires_grad_(), None, None, ("a",), lambda *args: None)
    assert len(set(seen)) == 3
    assert seen[0][-1] is None and seen[2][-1] == (True, False, False)


def test_cache_command_lists_and_clears(tuning):
    autotune.choose(("k",), (torch.zeros(1),), "native", ("native", "reference"), lambda b: sleeper(0))
    env = dict(os.environ)
    listed = subprocess.run([sys.executable, "-m", "dlkernels", "cache"], capture_output=True, text=True, env=env,
                            check=True).stdout
    assert "entries        1" in listed and autotune.key_name(("k",)) in listed
    info = subprocess.run([sys.executable, "-m", "dlkernels", "info"], capture_output=True, text=True, env=env,
                          check=True).stdout
    assert "autotune         on" in info and str(tuning) in info
    cleared = subprocess.run([sys.executable, "-m", "dlkernels", "cache", "--clear"], capture_output=True, text=True,
                             env=env, check=True).stdout
    assert cleared.startswith("removed") and list(tuning.iterdir()) == []


def test_bad_input_is_reported_as_without_measuring(tuning):
    """Measuring a call no backend can run gives way to the op's own error, and nothing is cached."""
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="groups"):
        dlkernels.ops.conv2d(x, torch.randn(6, 4, 3, 3), groups=3)
    with pytest.raises(TypeError, match="'kernel_size' to be an int"):
        dlkernels.ops.max_pool2d(x, 2.5)
    assert autotune.entries() == {}


@needs_native
@pytest.mark.parametrize("channels,groups,expected", [(8, 1, "native"), (8, 4, "reference"), (8, 8, "native"),
                                                       (32, 4, "native"), (48, 2, "reference")])
def test_static_rule_without_measuring(monkeypatch, tmp_path, channels, groups, expected):
    """DLKERNELS_AUTOTUNE=0: native, except CPU grouped convolutions that are not depthwise (the reference)
    unless their groups have 8 or 16 channels (the direct grouped kernel); nothing is measured or written."""
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "0")
    monkeypatch.setenv(autotune.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(autotune, "_choices", {})
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, groups=groups))
    converted, report = dlkernels.convert(model, return_report=True)
    x = torch.randn(1, channels, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))
    assert report.implementations() == {"0": {"inference": expected}}
    assert list(tmp_path.iterdir()) == []


@needs_native
def test_memo_key_tells_apart_what_the_key_does(one_thread):
    """ops._memo_key (the C read of what auto's key takes from the tensors) differs wherever the key differs: x's
    shape, layout, dtype, which inputs autograd differentiates, the thread count, the weight's and bias's shapes
    or absence; equal tensors of the same metadata give the same; None for what is not a plain tensor."""
    memo_key = dlkernels.ops._memo_key
    x, w, b = torch.zeros(2, 3, 4, 4), torch.zeros(5, 3, 1, 1), torch.zeros(5)
    base = memo_key(x, w, b)
    assert isinstance(base, bytes) and memo_key(x.clone(), w.clone(), b.clone()) == base
    others = [memo_key(torch.zeros(2, 3, 4, 5), w, b), memo_key(x.to(memory_format=torch.channels_last), w, b),
              memo_key(x.double(), w, b), memo_key(x, torch.zeros(5, 3, 3, 3), b), memo_key(x, w, None),
              memo_key(x, w, torch.zeros(6)), memo_key(x, None, None), memo_key(x.clone().requires_grad_(), w, b),
              memo_key(x, w.clone().requires_grad_(), b)]
    with torch.no_grad():  # autograd records nothing: the key of no gradients
        assert memo_key(x.clone().requires_grad_(), w.clone().requires_grad_(), b) == base
    torch.set_num_threads(2)
    try:
        others.append(memo_key(x, w, b))
    finally:
        torch.set_num_threads(1)
    assert None not in others and len({base, *others}) == len(others) + 1

    class Sub(torch.Tensor):
        pass

    assert memo_key(x.as_subclass(Sub), w, b) is None and memo_key([1.0], w, b) is None


@needs_native
def test_functional_calls_find_their_choice_by_the_short_key(tuning, one_thread, monkeypatch):
    """After its first call, a functional call's choice is found by (op, signature, memo key) without building
    auto's key; autotune.clear() forgets it too (the next call measures again)."""
    x, w, b = conv_args()
    built = []
    call_key = dlkernels.ops._call_key
    monkeypatch.setattr(dlkernels.ops, "_call_key", lambda *args: built.append(1) or call_key(*args))
    monkeypatch.setattr(autotune, "choose", forcing("reference", {}))
    for _ in range(3):
        torch.testing.assert_close(dlkernels.ops.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1))
    assert len(built) == 1
    autotune.clear()
    dlkernels.ops.conv2d(x, w, b, padding=1)
    assert len(built) == 2


@needs_native
def test_layers_remember_their_choices(tuning, monkeypatch):
    """A layer keeps auto's final choices by call key (the input's shape, layout, dtype, device, threads and
    autograd flags): its next such call asks nothing, another call key asks again; any attribute assignment,
    autotune.clear() and a copy start afresh; a choice autotune does not keep (measuring off) is not kept."""
    asked = []

    def force(key, tensors, static, candidates, make_step):
        asked.append(key)
        autotune._choices[key] = "reference"
        return "reference"

    monkeypatch.setattr(autotune, "choose", force)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    layers = [
        (dlkernels.nn.Conv2d(3, 4, 3, padding=1, activation="relu"),
         lambda layer, x: F.relu(F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding))),
        (dlkernels.nn.Conv2dMaxPool(3, 4, 3, padding=1, activation="tanh"),
         lambda layer, x: F.max_pool2d(torch.tanh(F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)),
                                       layer.pool_kernel_size, layer.pool_stride)),
        (dlkernels.nn.MaxPool2d(2), lambda layer, x: F.max_pool2d(x, layer.kernel_size, layer.stride)),
        (dlkernels.nn.Linear(8, 5, activation="gelu"),
         lambda layer, x: F.gelu(F.linear(x, layer.weight, layer.bias))),
    ]
    for layer, expected in layers:
        def run(x=x):
            out = layer(x)
            torch.testing.assert_close(out, expected(layer, x))
            return out

        asked.clear()
        with torch.no_grad():
            run()
            run()
            assert len(asked) == 1 and layer._plan.choices == {dlkernels.ops._memo_key(x, *(
                (layer.weight, layer.bias) if hasattr(layer, "weight") else (None, None))): "reference"}
            run(x.to(memory_format=torch.channels_last))  # another layout: another key
            run(x.to(memory_format=torch.channels_last))
        x.requires_grad_()
        run().sum().backward()  # autograd records: a training key
        run()
        with torch.no_grad():
            run()  # the first key again
        x.requires_grad_(False)
        assert len(asked) == 3
        assert layer.__dict__["_implementations"] == {"inference": "reference", "training": "reference"}

        # Any assignment drops the plan; a new stride / pooling changes the key's own part too.
        if isinstance(layer, dlkernels.nn.MaxPool2d):
            layer.stride = 1
        elif isinstance(layer, dlkernels.nn.Conv2d):
            layer.stride = (2, 2)
        else:
            layer.activation = "relu"
            expected = lambda layer, x: F.relu(F.linear(x, layer.weight, layer.bias))  # noqa: E731
        assert layer._plan is None
        with torch.no_grad():
            run()
            assert len(asked) == 4

            autotune.clear()
            run()
            assert len(asked) == 5

            copied = copy.deepcopy(layer)
            assert copied._plan is None and copied(x).shape == run().shape
            assert len(asked) == 5  # the copy's call found the choice in autotune's memory, and kept it
            assert copied._plan.choices == layer._plan.choices

    # Measuring off: the static rule each call, which the layer does not keep.
    monkeypatch.setenv(autotune.ENV_AUTOTUNE, "0")
    monkeypatch.setattr(autotune, "choose", original_choose)
    autotune.clear()
    layer, expected = layers[0]
    for _ in range(2):
        torch.testing.assert_close(layer(x), expected(layer, x))
        assert layer._plan.choices == {}


original_choose = autotune.choose


@needs_native
def test_layers_read_parametrized_weights():
    """A weight computed by a parametrization (or weight_norm) is the one the layer's call uses."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g)
    for backend in ("auto", "native"):
        conv = dlkernels.nn.Conv2d(3, 4, 3, backend=backend)
        torch.nn.utils.parametrize.register_parametrization(conv, "weight", _Doubled())
        torch.testing.assert_close(conv(x), F.conv2d(x, 2 * conv.parametrizations.weight.original, conv.bias))
        linear = torch.nn.utils.parametrizations.weight_norm(dlkernels.nn.Linear(6, 5, backend=backend))
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias))
        linear.parametrizations.weight.original0.data.mul_(3)
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias))


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight
