"""Every layer shape of the models suite, op by op: `python -m benchmarks --suite layers`.

The shapes are collected, not written by hand: forward hooks on every nn.Conv2d, nn.Linear and nn.MaxPool2d
of the models of benchmarks/model_suite.py (their torch form, eval mode, the suite's input sizes) at batch 1
and batch 8 record each call's input shape and the layer's arguments (weight shape, stride, padding, dilation,
groups, bias; kernel, stride, padding, dilation, ceil_mode for the pools) and the input's layout (NHWC where
it is channels-last, as convnext's depthwise and downsampling convs get it from its permutes; the rows then
time that layout, the `layout` column). Identical shapes are kept once (the
`models` column names where each comes from, `count` how many layers share it). A Linear over more than two
dimensions (convnext's MLP on N,H,W,C) is timed on its flattened (rows, features) input: the same GEMM.

Each shape is timed as the bare op, no activation (the models fuse theirs; this is the kernel itself):
- torch_eager  torch.nn.functional.conv2d / linear / max_pool2d;
- dlk_native   dlkernels.ops.conv2d / linear_act / max_pool2d with backend="native";
- dlk_auto     the same with backend="auto" (what convert gives by default: a kernel that loses to torch
               stays visible in this column until "auto" stops picking it);
in two modes: forward (no autograd), and fwd+bwd (inputs, weight and bias require grad; forward, then backward
of a fixed gradient). The providers are timed in turn, `--rounds` times, each measurement a loop of calls
sized to the per-case budget (at least one call); a row reports the median over the rounds and the ratio
torch time / dlkernels time (> 1: dlkernels is faster) as the median and range of the per-round ratios.
Each dlkernels output is first checked against torch's (forward, relative error); a wrong one is not timed.
"""
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import dlkernels

from . import model_suite
from .timing import in_turn, ratio_stats

PROVIDERS = ("torch_eager", "dlk_native", "dlk_auto")
BACKENDS = {"dlk_native": "native", "dlk_auto": "auto"}
MODES = ("forward", "fwd+bwd")
BATCHES = (1, 8)
QUICK_BATCHES = (1,)
TOLERANCE = 1e-4


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _layout(x):
    """NHWC for a channels-last 4-D input (and not also NCHW-contiguous, as a 1x1 image or 1 channel is),
    else NCHW."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return "NHWC" if cl else "NCHW"


def collect_shapes(specs, batches, log=print):
    """{key: shape dict} of every distinct conv2d / linear / max_pool2d call of the models at those batches."""
    shapes = {}

    def add(key, shape, origin):
        entry = shapes.setdefault(key, dict(shape, models=[], count=0))
        entry["count"] += 1
        if origin not in entry["models"]:
            entry["models"].append(origin)

    seen = set()
    for spec in specs:
        if (spec.builder, spec.chw) in seen:  # e.g. TinyVGG at two batches, efficientnet frozen or not
            continue
        seen.add((spec.builder, spec.chw))
        model = spec.build().eval()
        for batch in batches:
            origin = spec.name.replace(" frozen features", "")
            handles = []
            for module in model.modules():
                if type(module) is nn.Conv2d:
                    if module.padding_mode != "zeros" or isinstance(module.padding, str):
                        continue

                    def hook(m, args, _out):
                        x = args[0]
                        shape = {"op": "conv2d", "x": tuple(x.shape), "w": tuple(m.weight.shape),
                                 "stride": _pair(m.stride), "padding": _pair(m.padding),
                                 "dilation": _pair(m.dilation), "groups": m.groups, "bias": m.bias is not None,
                                 "layout": _layout(x)}
                        add(("conv2d",) + tuple(shape.values()), shape, origin)
                elif type(module) is nn.Linear:
                    def hook(m, args, _out):
                        x = args[0]
                        rows = math.prod(x.shape[:-1])
                        shape = {"op": "linear", "x": (rows, x.shape[-1]), "w": tuple(m.weight.shape),
                                 "bias": m.bias is not None}
                        add(("linear",) + tuple(shape.values()), shape, origin)
                elif type(module) is nn.MaxPool2d:
                    if module.return_indices:
                        continue

                    def hook(m, args, _out):
                        x = args[0]
                        stride = m.stride if m.stride not in (None, (), []) else m.kernel_size
                        shape = {"op": "max_pool2d", "x": tuple(x.shape), "kernel": _pair(m.kernel_size),
                                 "stride": _pair(stride), "padding": _pair(m.padding),
                                 "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode),
                                 "layout": _layout(x)}
                        add(("max_pool2d",) + tuple(shape.values()), shape, origin)
                else:
                    continue
                handles.append(module.register_forward_hook(hook))
            x = torch.randn((batch,) + spec.chw)
            try:
                with torch.no_grad():
                    model(x)
            finally:
                for h in handles:
                    h.remove()
    return list(shapes.values())


def kind(shape):
    """The family of the shape, for the summary: conv 1x1, conv kxk, conv depthwise (one input channel per
    group), conv grouped, linear, max_pool2d."""
    if shape["op"] != "conv2d":
        return shape["op"]
    cout, cin_g, kh, kw = shape["w"]
    if shape["groups"] > 1:
        return "conv depthwise" if cin_g == 1 else "conv grouped"
    return "conv 1x1" if (kh, kw) == (1, 1) else "conv kxk"


KINDS = ("conv 1x1", "conv kxk", "conv depthwise", "conv grouped", "linear", "max_pool2d")


def describe(shape):
    op = shape["op"]
    x = "x".join(map(str, shape["x"]))
    if op == "linear":
        return f"x {x}, W {shape['w'][0]}x{shape['w'][1]}" + ("" if shape["bias"] else ", no bias")
    if op == "conv2d":
        w = "x".join(map(str, shape["w"]))
        parts = [f"x {x}", f"W {w}"]
        for k, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
            if tuple(shape[k]) != default:
                parts.append(f"{k[:3] if k != 'padding' else 'pad'} {_short(shape[k])}")
        if shape["groups"] != 1:
            parts.append(f"groups {shape['groups']}")
        if not shape["bias"]:
            parts.append("no bias")
        if shape.get("layout") == "NHWC":
            parts.append("NHWC")
        return ", ".join(parts)
    parts = [f"x {x}", f"k {_short(shape['kernel'])}", f"s {_short(shape['stride'])}"]
    if tuple(shape["padding"]) != (0, 0):
        parts.append(f"pad {_short(shape['padding'])}")
    if tuple(shape["dilation"]) != (1, 1):
        parts.append(f"dil {_short(shape['dilation'])}")
    if shape["ceil_mode"]:
        parts.append("ceil")
    if shape.get("layout") == "NHWC":
        parts.append("NHWC")
    return ", ".join(parts)


def _short(pair):
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def flops(shape):
    """Forward FLOPs of the bare op (multiply-adds x 2; comparisons for the pools)."""
    if shape["op"] == "linear":
        (m, k), n = shape["x"], shape["w"][0]
        return 2 * m * k * n
    if shape["op"] == "conv2d":
        n, _, h, w = shape["x"]
        cout, cin_g, kh, kw = shape["w"]
        oh = (h + 2 * shape["padding"][0] - shape["dilation"][0] * (kh - 1) - 1) // shape["stride"][0] + 1
        ow = (w + 2 * shape["padding"][1] - shape["dilation"][1] * (kw - 1) - 1) // shape["stride"][1] + 1
        return 2 * n * cout * oh * ow * cin_g * kh * kw
    n, c, h, w = shape["x"]
    return n * c * h * w  # about one comparison per input element


def make_inputs(shape, grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape["x"], generator=g)
    if shape.get("layout") == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = {"x": x}
    if shape["op"] in ("conv2d", "linear"):
        fan_in = math.prod(shape["w"][1:])
        tensors["w"] = torch.randn(*shape["w"], generator=g) / math.sqrt(fan_in)
        tensors["b"] = torch.randn(shape["w"][0], generator=g) if shape["bias"] else None
    if grad:
        for t in tensors.values():
            if t is not None:
                t.requires_grad_(True)
    return tensors


def op_fn(shape, provider):
    """f(tensors) -> output for the provider."""
    backend = BACKENDS.get(provider)
    op = shape["op"]
    if op == "linear":
        if backend:
            return lambda t: dlkernels.ops.linear_act(t["x"], t["w"], t["b"], "none", backend=backend)
        return lambda t: F.linear(t["x"], t["w"], t["b"])
    if op == "conv2d":
        args = (shape["stride"], shape["padding"], shape["dilation"], shape["groups"])
        if backend:
            return lambda t: dlkernels.ops.conv2d(t["x"], t["w"], t["b"], *args, activation="none", backend=backend)
        return lambda t: F.conv2d(t["x"], t["w"], t["b"], *args)
    args = (shape["kernel"], shape["stride"], shape["padding"], shape["dilation"], shape["ceil_mode"])
    if backend:
        return lambda t: dlkernels.ops.max_pool2d(t["x"], *args, backend=backend)
    return lambda t: F.max_pool2d(t["x"], *args)


def timed_call(fn, tensors, mode):
    if mode == "forward":
        def call():
            with torch.no_grad():
                return fn(tensors)
        return call
    grad_out = torch.randn_like(fn(tensors).detach())

    def call_bwd():
        for t in tensors.values():
            if t is not None:
                t.grad = None
        out = fn(tensors)
        out.backward(grad_out)

    return call_bwd


def run_shape(shape, mode, rounds, budget):
    """Rows for one shape in one mode, one per provider; the providers timed in turn."""
    base = {"op": shape["op"], "kind": kind(shape), "case": describe(shape), "batch": shape["x"][0], "mode": mode,
            "models": " ".join(shape["models"]), "count": shape["count"], "flops": flops(shape) * (3 if mode ==
            "fwd+bwd" and shape["op"] != "max_pool2d" else 1),
            "x_shape": "x".join(map(str, shape["x"])),
            "w_shape": "x".join(map(str, shape["w"])) if "w" in shape else "",
            "stride": _short(shape["stride"]) if "stride" in shape else "",
            "padding": _short(shape["padding"]) if "padding" in shape else "",
            "dilation": _short(shape["dilation"]) if "dilation" in shape else "",
            "groups": shape.get("groups", ""), "bias": shape.get("bias", ""),
            "kernel": _short(shape["kernel"]) if "kernel" in shape else "",
            "ceil_mode": shape.get("ceil_mode", ""), "layout": shape.get("layout", "")}
    tensors = make_inputs(shape, grad=mode != "forward")
    rows, calls = [], {}
    with torch.no_grad():
        ref = op_fn(shape, "torch_eager")(tensors).detach().double()
    for provider in PROVIDERS:
        row = dict(base, provider=provider, status="", reason="", median_s=None, min_s=None, max_s=None,
                   calls_per_round=None, rounds=None, gflops=None, max_err=None,
                   speedup=None, speedup_min=None, speedup_max=None)
        rows.append(row)
        try:
            fn = op_fn(shape, provider)
            if provider != "torch_eager":
                with torch.no_grad():
                    out = fn(tensors).detach().double()
                err = (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30) if ref.numel() else 0.0
                row["max_err"] = err
                if not err <= TOLERANCE:
                    row.update(status="wrong", reason=f"max error {err:.3g} > {TOLERANCE:g}: not timed")
                    continue
            call = timed_call(fn, tensors, mode)
            call()  # warm-up
            calls[provider] = call
        except Exception as error:  # noqa: BLE001 (reported in the row, the run goes on)
            row.update(status="error", reason=f"{type(error).__name__}: {error}".splitlines()[0][:200])
    if not calls:
        return rows
    times, n = in_turn(calls, rounds, budget)
    for row in rows:
        t = times.get(row["provider"])
        if not t:
            continue
        med = statistics.median(t)
        row.update(status="ok", median_s=med, min_s=min(t), max_s=max(t), calls_per_round=n, rounds=rounds,
                   gflops=row["flops"] / med / 1e9)
        if "torch_eager" in times:
            row.update(zip(("speedup", "speedup_min", "speedup_max"), ratio_stats(times["torch_eager"], t)))
    return rows


def summary(rows, by_kind=False):
    """Per provider (but eager) and mode (and kind of shape, with by_kind): rows timed, the fraction with ratio
    >= 1.0, the minimum ratio and where, the geometric mean."""
    out = []
    for provider in PROVIDERS[1:]:
        for mode in MODES:
            for k in KINDS if by_kind else (None,):
                out += _summary_entry(rows, provider, mode, k)
    return out


def _summary_entry(rows, provider, mode, k):
    rows = [r for r in rows if r["provider"] == provider and r["mode"] == mode and (k is None or r["kind"] == k)]
    ok = [r for r in rows if r["status"] == "ok" and r["speedup"]]
    bad = [r for r in rows if r["status"] in ("wrong", "error")]
    if not ok and not bad:
        return []
    entry = {"provider": provider, "mode": mode, "rows": len(ok), "not_timed": len(bad)}
    if k is not None:
        entry["kind"] = k
    if ok:
        worst = min(ok, key=lambda r: r["speedup"])
        entry.update(
            at_least_1x=sum(r["speedup"] >= 1.0 for r in ok) / len(ok),
            min_ratio=worst["speedup"],
            min_case=f"{worst['op']} {worst['case']}",
            geomean=math.exp(sum(math.log(r["speedup"]) for r in ok) / len(ok)),
        )
    return [entry]


def summary_text(entries):
    lines = []
    for e in entries:
        head = f"{e['provider']:11s} {e['mode']:8s}" + (f" {e['kind']:14s}" if "kind" in e else "")
        if not e["rows"]:
            lines.append(f"{head} no row timed ({e['not_timed']} wrong or error)")
            continue
        lines.append(f"{head} {e['rows']:4d} rows: {100 * e['at_least_1x']:5.1f}% >= 1.0x, "
                     f"geomean {e['geomean']:.2f}x, min {e['min_ratio']:.2f}x ({e['min_case']})"
                     + (f", {e['not_timed']} wrong or error" if e["not_timed"] else ""))
    return "\n".join(lines)


def run(quick=False, rounds=None, budget=None, log=print, max_seconds=None, only=None):
    specs = model_suite.QUICK_MODELS if quick else model_suite.MODELS
    if only:
        specs = [s for s in specs if any(o.lower() in s.label.lower() for o in only)]
    batches = QUICK_BATCHES if quick else BATCHES
    rounds = rounds or (2 if quick else 3)
    budget = budget or (0.005 if quick else 0.03)
    shapes = collect_shapes(specs, batches, log)
    if quick:  # a handful: the first shapes of each op
        shapes = [s for op in ("conv2d", "linear", "max_pool2d") for s in [s for s in shapes if s["op"] == op][:3]]
    shapes.sort(key=lambda s: (s["x"][0], s["op"], flops(s)))
    counts = ", ".join(f"{sum(s['op'] == op for s in shapes)} {op}" for op in ("conv2d", "linear", "max_pool2d"))
    log(f"{len(shapes)} distinct shapes ({counts}) at batch {', '.join(map(str, batches))}, {len(MODES)} modes, "
        f"{rounds} rounds")
    rows = []
    start = time.perf_counter()
    for i, shape in enumerate(shapes):
        for mode in MODES:
            if max_seconds and time.perf_counter() - start > max_seconds:
                rows += [dict(op=shape["op"], kind=kind(shape), case=describe(shape), batch=shape["x"][0], mode=mode,
                              provider=p, status="skipped", reason=f"--max-seconds {max_seconds:g} spent")
                         for p in PROVIDERS]
                continue
            new = run_shape(shape, mode, rounds, budget)
            rows += new
            cells = "  ".join(f"{r['provider']} " + (f"{r['speedup']:.2f}x" if r["speedup"] else r["status"])
                              for r in new if r["provider"] != "torch_eager")
            eager = new[0]["median_s"]
            log(f"[{i + 1}/{len(shapes)} {time.perf_counter() - start:4.0f}s] {shape['op']:10s} {mode:7s} "
                f"{describe(shape):60s} eager {eager * 1e6 if eager else float('nan'):9.1f} us  {cells}")
    return rows


COLUMNS = ["op", "kind", "case", "batch", "mode", "provider", "status", "reason", "median_s", "min_s", "max_s",
           "calls_per_round", "rounds", "speedup", "speedup_min", "speedup_max", "gflops", "flops", "max_err",
           "x_shape", "w_shape", "stride", "padding", "dilation", "groups", "bias", "kernel", "ceil_mode", "layout",
           "count", "models"]


def normalise(rows):
    return [{k: row.get(k) for k in COLUMNS} for row in rows]


def plot(path, rows, meta):
    """Each provider's per-row ratios, sorted (one curve per provider and mode): the share left of 1.0x is
    the share of shapes where dlkernels loses."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(MODES), figsize=(12, 5), sharey=True)
    for ax, mode in zip(axes, MODES):
        for provider, style in (("dlk_native", "-"), ("dlk_auto", "--")):
            vals = sorted(r["speedup"] for r in rows if r["provider"] == provider and r["mode"] == mode
                          and r["status"] == "ok" and r["speedup"])
            if vals:
                ax.plot([100 * (i + 0.5) / len(vals) for i in range(len(vals))], vals, style, label=provider)
        ax.axhline(1.0, color="black", lw=1)
        ax.set_yscale("log")
        ax.set_title(mode)
        ax.set_xlabel("% of layer shapes (sorted by ratio)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("torch eager time / dlkernels time (> 1: faster)")
    axes[0].legend()
    fig.suptitle(f"dlkernels layer shapes of the models: {meta['device_name']} ({meta['threads']} threads, "
                 f"{meta['time_utc'][:10]}, {meta['git_commit'][:8]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
