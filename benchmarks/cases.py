"""The benchmark cases, and the FLOP and minimal-byte formulas of each op and mode.

Conventions (unit-tested against hand counts in tests/test_benchmarks.py):

- FLOPs: a multiply-add counts 2; adding the bias counts 1 per output element; the activation (or its
  derivative in the backward) counts 1 per output element whatever it is (relu, gelu, ...); max pooling
  counts its comparisons, kh*kw - 1 per output element, and its backward 1 add per output element. Work that
  an implementation chooses to redo (dlkernels recomputes the pre-activation of gelu/silu in the backward) is
  not counted: these are the minimal FLOPs of the math.
- Minimal bytes: each input read once and each output written once, at the tensor's element size.
  forward   reads x, weight, bias; writes out.
  backward  reads grad_out, the saved x and weight, and one saved tensor of out's size when the activation
            needs one for its derivative (any activation but "none"); writes grad_x, grad_weight, grad_bias.
            max_pool2d's backward reads grad_out and the int64 indices and writes grad_x.
  fwd+bwd   one computation from (x, weight, bias, grad_out) to (out, grad_x, grad_weight, grad_bias):
            intermediates (saved tensors, indices) are not counted.
- conv2d_maxpool (the fused Conv -> activation -> MaxPool block) counts the conv's FLOPs plus the pooling's
  comparisons (its backward: the conv's backward plus one add per pooled output), and its own minimal bytes:
  the forward reads x, weight, bias and writes the pooled output; the backward reads grad_out, x, weight, the
  saved pooled output and its 1-byte window index, and writes grad_x, grad_weight, grad_bias. The unfused
  eager composite moves more (the conv output out and back in, twice); that is the point of the fusion.
  Block cases also report saved_bytes: the memory autograd keeps for the backward, the block's inputs and
  parameters not counted (they exist anyway).
- Model cases count the matmul/conv FLOPs with torch.utils.flop_counter (forward, or forward + backward for
  the training step); their minimal bytes are the input, the parameters read once, the logits written (and in
  the training step the labels read and the updated parameters written once).
"""
import copy
import math

import torch
import torch.nn.functional as F

import dlkernels
from dlkernels import reference
from dlkernels.contract import conv_output_size, pool_output_size

MODES = ("forward", "backward", "fwd+bwd")
OPS = ("linear_act", "conv2d", "max_pool2d", "conv2d_maxpool", "model")
INDEX_BYTES = 8  # int64 indices of max pooling


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


# ---------------------------------------------------------------------------------------------------------
# Formulas


def linear_flops(m, k, n, bias=True, activation="none", mode="forward"):
    _check_mode(mode)
    epilogue = m * n * (int(bias) + int(activation != "none"))
    fwd = 2 * m * n * k + epilogue
    bwd = 4 * m * n * k + epilogue  # grad_x = dZ W, grad_w = dZ^T x; act' and the bias sum once each
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


def linear_bytes(m, k, n, itemsize, bias=True, activation="none", mode="forward"):
    _check_mode(mode)
    x, w, b, out = m * k, n * k, n * int(bias), m * n
    saved = out * int(activation != "none")
    elements = {
        "forward": x + w + b + out,
        "backward": out + x + w + saved + x + w + b,
        "fwd+bwd": x + w + b + out + out + x + w + b,
    }[mode]
    return elements * itemsize


def conv2d_out_hw(h, w, r, s, stride=1, padding=0, dilation=1):
    return (conv_output_size(h, r, stride, padding, dilation), conv_output_size(w, s, stride, padding, dilation))


def conv2d_flops(n, c, h, w, k, r, s, stride=1, padding=0, dilation=1, groups=1, bias=True, activation="none",
                 mode="forward"):
    _check_mode(mode)
    p, q = conv2d_out_hw(h, w, r, s, stride, padding, dilation)
    macs = n * k * p * q * (c // groups) * r * s
    epilogue = n * k * p * q * (int(bias) + int(activation != "none"))
    fwd = 2 * macs + epilogue
    bwd = 4 * macs + epilogue
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


def conv2d_bytes(n, c, h, w, k, r, s, itemsize, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 activation="none", mode="forward"):
    _check_mode(mode)
    p, q = conv2d_out_hw(h, w, r, s, stride, padding, dilation)
    x, wt, b, out = n * c * h * w, k * (c // groups) * r * s, k * int(bias), n * k * p * q
    saved = out * int(activation != "none")
    elements = {
        "forward": x + wt + b + out,
        "backward": out + x + wt + saved + x + wt + b,
        "fwd+bwd": x + wt + b + out + out + x + wt + b,
    }[mode]
    return elements * itemsize


def pool_out_hw(h, w, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    stride = stride or kernel
    return (pool_output_size(h, kernel, stride, padding, dilation, ceil_mode),
            pool_output_size(w, kernel, stride, padding, dilation, ceil_mode))


def max_pool2d_flops(n, c, h, w, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, mode="forward"):
    _check_mode(mode)
    p, q = pool_out_hw(h, w, kernel, stride, padding, dilation, ceil_mode)
    fwd = n * c * p * q * (kernel * kernel - 1)
    bwd = n * c * p * q
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}[mode]


def max_pool2d_bytes(n, c, h, w, kernel, itemsize, stride=None, padding=0, dilation=1, ceil_mode=False,
                     mode="forward"):
    _check_mode(mode)
    p, q = pool_out_hw(h, w, kernel, stride, padding, dilation, ceil_mode)
    x, out = n * c * h * w, n * c * p * q
    return {
        "forward": (x + out) * itemsize,
        "backward": (out + x) * itemsize + out * INDEX_BYTES,
        "fwd+bwd": (x + out + out + x) * itemsize,
    }[mode]


# ---------------------------------------------------------------------------------------------------------
# Inputs


def nonzero_rand(shape, generator, device, dtype, scale=1.0, memory_format=None):
    """Random values with magnitude in [0.1, 1] * scale and random signs: never zero, no ties at zero."""
    magnitude = torch.rand(shape, generator=generator, device=device) * 0.9 + 0.1
    sign = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8) * 2 - 1
    t = (magnitude * sign * scale).to(dtype)
    if memory_format is not None:
        t = t.contiguous(memory_format=memory_format)
    return t


def _generator(device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


# ---------------------------------------------------------------------------------------------------------
# Cases


class OpCase:
    """One op at one shape. Implementations are callables fn(inputs) -> output tensor."""

    op = None
    diff = ("x", "weight", "bias")  # the inputs that get gradients
    modes = MODES

    def __init__(self, group, label, **params):
        self.group, self.label, self.params = group, label, params

    @property
    def name(self):
        return f"{self.group}/{self.label}"

    def __repr__(self):
        return f"{self.op}:{self.name}"

    # -- implementations ----------------------------------------------------------------------------------
    def torch_fn(self):
        """Stock PyTorch, as a user writes it (the eager baseline, and what torch.compile compiles)."""
        raise NotImplementedError

    def dlkernels_fn(self, backend):
        raise NotImplementedError

    def reference_fn(self):
        raise NotImplementedError

    # -- data -------------------------------------------------------------------------------------------
    def make_inputs(self, device, dtype, seed=0, requires_grad=False):
        raise NotImplementedError

    def input_bytes(self, inputs):
        return _nbytes(inputs.values())

    def count_inputs_for_rotation(self, mode):
        return True

    # -- running ------------------------------------------------------------------------------------------
    def bind(self, fn, mode, inputs):
        """A zero-argument callable running one call of mode on inputs (made with requires_grad for the
        modes with a backward). For "backward" the forward runs here, once, and only the backward is timed.
        Returns what the check compares: (out,), grads, or (out, *grads)."""
        _check_mode(mode)
        if mode == "forward":
            def call():
                with torch.no_grad():
                    return (fn(inputs),)
            return call
        diff = [inputs[k] for k in self.diff if inputs.get(k) is not None]
        grad_out = inputs["grad_out"]
        if mode == "backward":
            out = fn(inputs)
            return lambda: torch.autograd.grad(out, diff, grad_out, retain_graph=True)

        def call():
            out = fn(inputs)
            return (out, *torch.autograd.grad(out, diff, grad_out))
        return call

    def reference_outputs(self, mode, inputs):
        """The float64 reference of bind(...)() on the same inputs (upcast), on the inputs' device."""
        inputs64 = {k: (v.detach().double().requires_grad_(mode != "forward" and k in self.diff)
                        if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                    for k, v in inputs.items()}
        return self.bind(self.reference_fn(), mode, inputs64)()


class LinearCase(OpCase):
    op = "linear_act"

    def __init__(self, group, m, k, n, activation="relu", bias=True):
        super().__init__(group, f"M={m} K={k} N={n} {activation}", m=m, k=k, n=n, activation=activation, bias=bias)

    def flops(self, mode):
        p = self.params
        return linear_flops(p["m"], p["k"], p["n"], p["bias"], p["activation"], mode)

    def bytes(self, mode, itemsize):
        p = self.params
        return linear_bytes(p["m"], p["k"], p["n"], itemsize, p["bias"], p["activation"], mode)

    def extra_bytes_unfused(self, itemsize):
        """What a separate activation kernel adds to the forward: one more read and write of the output."""
        p = self.params
        return 2 * p["m"] * p["n"] * itemsize if p["activation"] != "none" else 0

    def make_inputs(self, device, dtype, seed=0, requires_grad=False):
        p = self.params
        g = _generator(device, seed)
        t = {
            "x": nonzero_rand((p["m"], p["k"]), g, device, dtype),
            "weight": nonzero_rand((p["n"], p["k"]), g, device, dtype, scale=1 / math.sqrt(p["k"])),
            "bias": nonzero_rand((p["n"],), g, device, dtype) if p["bias"] else None,
            "grad_out": nonzero_rand((p["m"], p["n"]), g, device, dtype),
        }
        for k in self.diff:
            if t.get(k) is not None:
                t[k].requires_grad_(requires_grad)
        return t

    def torch_fn(self):
        act = self.params["activation"]
        return lambda t: reference.activation(F.linear(t["x"], t["weight"], t["bias"]), act)

    def dlkernels_fn(self, backend):
        act = self.params["activation"]
        return lambda t: dlkernels.ops.linear_act(t["x"], t["weight"], t["bias"], act, backend=backend)

    def reference_fn(self):
        act = self.params["activation"]
        return lambda t: reference.linear_act(t["x"], t["weight"], t["bias"], act)


class ConvCase(OpCase):
    op = "conv2d"

    def __init__(self, group, n, c, h, k, r=3, stride=1, padding=1, activation="relu", bias=True, w=None):
        w = w or h
        label = f"N={n} {c}->{k} {h}x{w} k{r}" + (f" s{stride}" if stride != 1 else "") + f" {activation}"
        super().__init__(group, label, n=n, c=c, h=h, w=w, k=k, r=r, stride=stride, padding=padding,
                         activation=activation, bias=bias)

    def _geometry(self):
        p = self.params
        return (p["n"], p["c"], p["h"], p["w"], p["k"], p["r"], p["r"])

    def flops(self, mode):
        p = self.params
        return conv2d_flops(*self._geometry(), stride=p["stride"], padding=p["padding"], bias=p["bias"],
                            activation=p["activation"], mode=mode)

    def bytes(self, mode, itemsize):
        p = self.params
        return conv2d_bytes(*self._geometry(), itemsize, stride=p["stride"], padding=p["padding"], bias=p["bias"],
                            activation=p["activation"], mode=mode)

    def extra_bytes_unfused(self, itemsize):
        p = self.params
        oh, ow = conv2d_out_hw(p["h"], p["w"], p["r"], p["r"], p["stride"], p["padding"])
        return 2 * p["n"] * p["k"] * oh * ow * itemsize if p["activation"] != "none" else 0

    def make_inputs(self, device, dtype, seed=0, requires_grad=False):
        p = self.params
        g = _generator(device, seed)
        oh, ow = conv2d_out_hw(p["h"], p["w"], p["r"], p["r"], p["stride"], p["padding"])
        fan_in = p["c"] * p["r"] * p["r"]
        t = {
            "x": nonzero_rand((p["n"], p["c"], p["h"], p["w"]), g, device, dtype),
            "weight": nonzero_rand((p["k"], p["c"], p["r"], p["r"]), g, device, dtype, scale=1 / math.sqrt(fan_in)),
            "bias": nonzero_rand((p["k"],), g, device, dtype) if p["bias"] else None,
            "grad_out": nonzero_rand((p["n"], p["k"], oh, ow), g, device, dtype),
        }
        for k in self.diff:
            if t.get(k) is not None:
                t[k].requires_grad_(requires_grad)
        return t

    def torch_fn(self):
        p = self.params
        return lambda t: reference.activation(
            F.conv2d(t["x"], t["weight"], t["bias"], p["stride"], p["padding"]), p["activation"])

    def dlkernels_fn(self, backend):
        p = self.params
        return lambda t: dlkernels.ops.conv2d(t["x"], t["weight"], t["bias"], p["stride"], p["padding"],
                                              activation=p["activation"], backend=backend)

    def reference_fn(self):
        p = self.params
        return lambda t: reference.conv2d(t["x"], t["weight"], t["bias"], p["stride"], p["padding"], 1, 1,
                                          p["activation"])


class PoolCase(OpCase):
    op = "max_pool2d"
    diff = ("x",)

    def __init__(self, group, n, c, h, kernel=2, stride=None, padding=0, channels_last=False, w=None):
        w = w or h
        stride = stride or kernel
        layout = "NHWC" if channels_last else "NCHW"
        label = f"N={n} C={c} {h}x{w} k{kernel}s{stride}" + (f"p{padding}" if padding else "") + f" {layout}"
        super().__init__(group, label, n=n, c=c, h=h, w=w, kernel=kernel, stride=stride, padding=padding,
                         channels_last=channels_last)

    def _args(self):
        p = self.params
        return (p["n"], p["c"], p["h"], p["w"], p["kernel"])

    def flops(self, mode):
        p = self.params
        return max_pool2d_flops(*self._args(), stride=p["stride"], padding=p["padding"], mode=mode)

    def bytes(self, mode, itemsize):
        p = self.params
        return max_pool2d_bytes(*self._args(), itemsize, stride=p["stride"], padding=p["padding"], mode=mode)

    def extra_bytes_unfused(self, itemsize):
        return 0

    def make_inputs(self, device, dtype, seed=0, requires_grad=False):
        p = self.params
        g = _generator(device, seed)
        fmt = torch.channels_last if p["channels_last"] else torch.contiguous_format
        oh, ow = pool_out_hw(p["h"], p["w"], p["kernel"], p["stride"], p["padding"])
        return {
            "x": nonzero_rand((p["n"], p["c"], p["h"], p["w"]), g, device, dtype, memory_format=fmt).requires_grad_(
                requires_grad
            ),
            "grad_out": nonzero_rand((p["n"], p["c"], oh, ow), g, device, dtype, memory_format=fmt),
        }

    def torch_fn(self):
        p = self.params
        return lambda t: F.max_pool2d(t["x"], p["kernel"], p["stride"], p["padding"])

    def dlkernels_fn(self, backend):
        p = self.params
        return lambda t: dlkernels.ops.max_pool2d(t["x"], p["kernel"], p["stride"], p["padding"], backend=backend)

    def reference_fn(self):
        p = self.params
        return lambda t: reference.max_pool2d(t["x"], p["kernel"], p["stride"], p["padding"])


def saved_bytes(fn, inputs, exclude):
    """Bytes autograd keeps for the backward of one forward of fn(inputs): the distinct storages of the saved
    tensors (their full storage, as the allocator holds it), those of the tensors in `exclude` (the inputs
    and parameters, which exist anyway) left out."""
    storages = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude if isinstance(t, torch.Tensor)}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(inputs)
    del out
    return sum(storages.values())


class BlockCase(OpCase):
    """The fused block max_pool2d(act(conv2d(x))), 3x3 conv with padding 1 and a pool of stride = kernel; torch's
    baseline is the three eager ops."""

    op = "conv2d_maxpool"

    def __init__(self, group, n, c, h, k, pool=2, activation="relu", w=None):
        w = w or h
        super().__init__(group, f"N={n} {c}->{k} {h}x{w} k3 pool{pool} {activation}", n=n, c=c, h=h, w=w, k=k,
                         pool=pool, activation=activation)

    def _conv(self):
        p = self.params
        return (p["n"], p["c"], p["h"], p["w"], p["k"], 3, 3)

    def _pooled(self):
        p = self.params
        return pool_out_hw(p["h"], p["w"], p["pool"])

    def flops(self, mode):
        p = self.params
        conv = conv2d_flops(*self._conv(), 1, 1, activation=p["activation"], mode=mode)
        return conv + max_pool2d_flops(p["n"], p["k"], p["h"], p["w"], p["pool"], mode=mode)

    def bytes(self, mode, itemsize):
        _check_mode(mode)
        p = self.params
        ph, pw = self._pooled()
        x, wt, b, out = p["n"] * p["c"] * p["h"] * p["w"], p["k"] * p["c"] * 9, p["k"], p["n"] * p["k"] * ph * pw
        elements = {
            "forward": x + wt + b + out,
            "backward": out + x + wt + out + x + wt + b,
            "fwd+bwd": x + wt + b + out + out + x + wt + b,
        }[mode]
        return elements * itemsize + (out if mode == "backward" else 0)  # the 1-byte window index

    def extra_bytes_unfused(self, itemsize):
        """What the unfused composite adds to the forward: the conv output written and read back (twice with a
        separate activation)."""
        p = self.params
        return 4 * p["n"] * p["k"] * p["h"] * p["w"] * itemsize

    def make_inputs(self, device, dtype, seed=0, requires_grad=False):
        p = self.params
        g = _generator(device, seed)
        ph, pw = self._pooled()
        t = {
            "x": nonzero_rand((p["n"], p["c"], p["h"], p["w"]), g, device, dtype),
            "weight": nonzero_rand((p["k"], p["c"], 3, 3), g, device, dtype, scale=1 / math.sqrt(p["c"] * 9)),
            "bias": nonzero_rand((p["k"],), g, device, dtype),
            "grad_out": nonzero_rand((p["n"], p["k"], ph, pw), g, device, dtype),
        }
        for k in self.diff:
            t[k].requires_grad_(requires_grad)
        return t

    def torch_fn(self):
        p = self.params
        return lambda t: F.max_pool2d(reference.activation(F.conv2d(t["x"], t["weight"], t["bias"], 1, 1),
                                                           p["activation"]), p["pool"])

    def dlkernels_fn(self, backend):
        p = self.params
        return lambda t: dlkernels.ops.conv2d_maxpool(t["x"], t["weight"], t["bias"], 1, 1, activation=p["activation"],
                                                      pool_kernel_size=p["pool"], backend=backend)

    def reference_fn(self):
        p = self.params
        return lambda t: reference.conv2d_maxpool(t["x"], t["weight"], t["bias"], 1, 1, 1, 1, p["activation"], None,
                                                  p["pool"])

    def saved_bytes(self, fn, inputs):
        return saved_bytes(fn, inputs, [inputs[k] for k in self.diff])


class ModelCase:
    """A model-level case: "forward" is an inference pass (eval, no grad); "fwd+bwd" is a training step
    (forward, cross-entropy, backward, SGD update of the parameters). Implementations are nn.Modules."""

    op = "model"
    modes = ("forward", "fwd+bwd")
    lr = 1e-4

    def __init__(self, group, model, batch, channels, size, classes, **model_kwargs):
        label = f"{model} N={batch} {channels}x{size}x{size}"
        self.group, self.label = group, label
        self.params = dict(model=model, batch=batch, channels=channels, size=size, classes=classes, **model_kwargs)
        self._model = None
        self._flops = {}

    @property
    def name(self):
        return f"{self.group}/{self.label}"

    def __repr__(self):
        return f"model:{self.name}"

    def base_model(self):
        """The torch model (float32, CPU, fixed random weights), built once."""
        if self._model is None:
            from . import models

            p = self.params
            torch.manual_seed(0)
            kwargs = dict(classes=p["classes"])
            if p["model"] == "tinyvgg":
                kwargs.update(in_channels=p["channels"], size=p["size"], hidden=p.get("hidden", 10))
            self._model = models.build(p["model"], **kwargs).eval()
        return self._model

    def torch_model(self, device, dtype):
        return copy.deepcopy(self.base_model()).to(device=device, dtype=dtype)

    def make_inputs(self, device, dtype, seed=0, requires_grad=False):
        p = self.params
        g = _generator(device, seed)
        return {
            "x": nonzero_rand((p["batch"], p["channels"], p["size"], p["size"]), g, device, dtype),
            "y": torch.randint(0, p["classes"], (p["batch"],), generator=g, device=device),
        }

    def input_bytes(self, inputs):
        return _nbytes(inputs.values())

    def count_inputs_for_rotation(self, mode):
        return True

    @staticmethod
    def named_params(model):
        return [(n, q) for n, q in getattr(model, "_orig_mod", model).named_parameters()]

    def param_count(self):
        return sum(q.numel() for q in self.base_model().parameters())

    def bind(self, model, mode, inputs):
        _check_mode(mode)
        x, y = inputs["x"], inputs["y"]
        if mode == "forward":
            model.eval()

            def call():
                with torch.no_grad():
                    return (model(x),)
            return call
        if mode != "fwd+bwd":
            raise ValueError("model cases time the inference pass (forward) and the training step (fwd+bwd)")
        model.train()
        named = self.named_params(model)
        params = [q for _, q in named]
        lr = self.lr

        def call():
            logits = model(x)
            loss = F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-lr)
            return {"loss": loss, **{n: g for (n, _), g in zip(named, grads)}}
        return call

    def reference_outputs(self, mode, inputs):
        model64 = copy.deepcopy(self.base_model()).to(device=inputs["x"].device, dtype=torch.float64)
        inputs64 = {"x": inputs["x"].double(), "y": inputs["y"]}
        return self.bind(model64, mode, inputs64)()

    def flops(self, mode, device="cpu"):
        """Matmul/conv FLOPs of one pass (FlopCounterMode on the meta device)."""
        if mode not in self._flops:
            from torch.utils.flop_counter import FlopCounterMode

            model = copy.deepcopy(self.base_model()).to("meta")
            inputs = self.make_inputs("cpu", torch.float32)
            x = inputs["x"].to("meta")
            counter = FlopCounterMode(display=False)
            with counter:
                if mode == "forward":
                    with torch.no_grad():
                        model(x)
                else:
                    loss = model(x).sum()
                    loss.backward()
            self._flops[mode] = counter.get_total_flops()
        return self._flops[mode]

    def bytes(self, mode, itemsize):
        p = self.params
        x = p["batch"] * p["channels"] * p["size"] ** 2 * itemsize
        params = self.param_count() * itemsize
        logits = p["batch"] * p["classes"] * itemsize
        if mode == "forward":
            return x + params + logits
        return x + p["batch"] * INDEX_BYTES + 2 * params + 4  # labels in, updated parameters out, the loss

    def extra_bytes_unfused(self, itemsize):
        return 0


# ---------------------------------------------------------------------------------------------------------
# The case lists: full-size on a GPU, shrunk on the CPU, fewer with --quick


def linear_cases(gpu, quick):
    if gpu:
        shapes = [(1, 4096), (128, 4096), (8192, 4096), (8192, 8192)] if quick else \
            [(1, 4096), (16, 4096), (128, 4096), (1024, 4096), (8192, 4096), (1, 8192), (8192, 8192)]
        extra = [] if quick else [LinearCase("mlp", 1024, 4096, 4096, "gelu")]
    else:
        shapes = [(1, 512), (256, 512)] if quick else [(1, 1024), (16, 1024), (128, 1024), (1024, 1024), (1, 4096)]
        extra = [] if quick else [LinearCase("mlp", 128, 1024, 1024, "gelu")]
    return [LinearCase("mlp", m, kn, kn, "relu") for m, kn in shapes] + extra


def conv_cases(gpu, quick):
    b = 32  # the seed's batch size
    tiny = [
        ConvCase("tinyvgg28", b, 1, 28, 10),
        ConvCase("tinyvgg28", b, 10, 28, 10),
        ConvCase("tinyvgg28", b, 10, 14, 10),
        ConvCase("tinyvgg64", b, 3, 64, 10),
        ConvCase("tinyvgg64", b, 10, 64, 10),
        ConvCase("tinyvgg64", b, 10, 32, 10),
    ]
    if quick:
        tiny = [tiny[1], tiny[3]]
    elif not gpu:
        tiny = [tiny[0], tiny[1], tiny[3], tiny[4]]
    if gpu:
        n = 8 if quick else 32
        vgg = [ConvCase("vgg", n, 64, 224, 64), ConvCase("vgg", n, 512, 14, 512)] if quick else \
            [ConvCase("vgg", n, 3, 224, 64), ConvCase("vgg", n, 64, 224, 64), ConvCase("vgg", n, 128, 112, 128),
             ConvCase("vgg", n, 256, 56, 256), ConvCase("vgg", n, 512, 28, 512), ConvCase("vgg", n, 512, 14, 512)]
        resnet = (
            [ConvCase("resnet", n, 64, 56, 64)]
            if quick
            else [
                ConvCase("resnet", n, 64, 56, 64),
                ConvCase("resnet", n, 128, 56, 128, stride=2),
                ConvCase("resnet", n, 128, 28, 128),
                ConvCase("resnet", n, 256, 14, 256),
                ConvCase("resnet", n, 512, 7, 512),
            ]
        )
    else:
        # CPU: batch 1, and VGG's early layers at a quarter of their 224x224 resolution.
        vgg = [] if quick else [ConvCase("vgg", 1, 64, 56, 64), ConvCase("vgg", 1, 512, 14, 512)]
        resnet = [ConvCase("resnet", 1, 64, 56, 64)] if quick else \
            [ConvCase("resnet", 1, 64, 56, 64), ConvCase("resnet", 1, 256, 14, 256), ConvCase("resnet", 1, 512, 7, 512)]
    return tiny + vgg + resnet


def pool_cases(gpu, quick):
    if gpu:
        n = 8 if quick else 32
        shapes = [("vgg", n, 64, 224, 2, 2, 0), ("resnet", n, 64, 112, 3, 2, 1)] if quick else \
            [("vgg", n, 64, 224, 2, 2, 0), ("vgg", n, 128, 112, 2, 2, 0), ("vgg", n, 256, 56, 2, 2, 0),
             ("vgg", n, 512, 28, 2, 2, 0), ("vgg", n, 512, 14, 2, 2, 0), ("resnet", n, 64, 112, 3, 2, 1)]
    else:
        shapes = [("resnet", 1, 64, 112, 3, 2, 1)] if quick else \
            [("vgg", 1, 64, 224, 2, 2, 0), ("vgg", 1, 512, 28, 2, 2, 0), ("resnet", 1, 64, 112, 3, 2, 1)]
    return [PoolCase(g, n, c, h, k, s, p, channels_last=cl) for g, n, c, h, k, s, p in shapes for cl in (False, True)]


def model_cases(gpu, quick):
    cases = [ModelCase("model", "tinyvgg", 32, 1, 28, 10)]
    if not quick:
        cases.append(ModelCase("model", "tinyvgg", 32, 3, 64, 3))
    if gpu:
        cases.append(ModelCase("model", "vgg11", 8 if quick else 32, 3, 224, 1000))
    elif not quick:
        cases.append(ModelCase("model", "vgg11", 1, 3, 32, 1000))  # CPU: 32x32 input, the classifier dominates
    return cases


def cpu_goal_cases():
    """The shapes of the CPU performance goals (float32, all threads): linear+relu at three sizes, a
    ResNet-style 3x3 conv + bias + relu, and max pooling on a large input in both layouts."""
    linear = [
        LinearCase("goals", m, k, n, "relu") for m, k, n in ((32, 4096, 4096), (512, 1024, 1024), (4096, 4096, 4096))
    ]
    conv = [ConvCase("goals", 32, 64, 56, 64)]
    pool = [PoolCase("goals", 64, 64, 112, k, 2, 0, channels_last=cl) for k in (2, 3) for cl in (False, True)]
    return linear + conv + pool


def block_cases(gpu, quick):
    """The fused Conv -> ReLU -> MaxPool block at the shapes of its goals: TinyVGG's (10 channels, batch 32,
    28x28 and 64x64) and VGG's (64-128 channels, batch 8, 56x56-112x112; batch 32 on a GPU)."""
    tiny = [BlockCase("tinyvgg28", 32, 10, 28, 10), BlockCase("tinyvgg64", 32, 10, 64, 10)]
    n = 32 if gpu else 8
    vgg = [BlockCase("vgg", n, 64, 112, 64), BlockCase("vgg", n, 64, 56, 128), BlockCase("vgg", n, 128, 56, 128)]
    return tiny if quick else tiny + vgg


def block_suite(gpu, quick):
    """--suite block: the block cases, and TinyVGG converted (its two blocks fused) as a model."""
    models = [ModelCase("model", "tinyvgg", 32, 1, 28, 10)]
    if not quick:
        models.append(ModelCase("model", "tinyvgg", 32, 3, 64, 3))
    return block_cases(gpu, quick) + models


SUITES = ("default", "cpu-goals", "block", "overhead", "models", "layers")
# overhead: benchmarks/overhead.py; models: benchmarks/model_suite.py; layers: benchmarks/layer_suite.py


def build_cases(device_type, quick=False, suite="default"):
    if suite == "cpu-goals":
        return cpu_goal_cases()
    if suite == "block":
        return block_suite(device_type == "cuda", quick)
    gpu = device_type == "cuda"
    return linear_cases(gpu, quick) + conv_cases(gpu, quick) + pool_cases(gpu, quick) + model_cases(gpu, quick)
