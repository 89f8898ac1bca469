"""Whole models, converted: `python -m benchmarks --suite models`.

Each model (torchvision, random weights, float32, on the CPU) runs as
- torch_eager     the torch model as it is;
- dlk_auto        dlkernels.convert(model, backend="auto");
- dlk_native      dlkernels.convert(model, backend="native");
- torch_compile   torch.compile(model) (only with --compile: compiling a dozen models forward and backward takes
                  far too long on a small shared CPU); its compile time (the first call; inductor's FX graph cache is
                  off, but its on-disk cache of built C++ kernels can still hit on a second run) is reported apart,
                  in compile_s, never in the step time;
each in two modes, on its own identical copy (same seed, same weights):
- inference       model.eval(), torch.no_grad(), one forward;
- training step   model.train(), forward, cross-entropy loss, backward, SGD step (optimizer.zero_grad first).
  Dropout is kept: every copy drops at the same rate. "frozen features" variants (transfer learning) set
  requires_grad=False on the parameters under `features.` and train the classifier only.

Timing: each measurement is the mean time per call over a loop of calls (time.perf_counter) sized to the
budget (at least one call); the providers are timed in turn, `--rounds` times (the order rotates every round),
so that a load that comes and goes on a shared machine falls on all of them. Each row reports the median over
the rounds, and its ratio to torch eager (and to torch.compile) as the median and the range (min-max) of the
per-round ratios: torch time / provider time, > 1 means the provider is faster.

Every converted model's output is checked against torch eager (inference, max |out - ref| / max |ref|) and
the conversion report is kept per model: how many layers were converted, which, the activations and pools
fused into them, and what was left as it was.
"""
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F

import dlkernels

from .models import TinyVGG
from .timing import in_turn, ratio_stats

PROVIDERS = ("torch_eager", "torch_compile", "dlk_auto", "dlk_native")
BACKENDS = {"dlk_auto": "auto", "dlk_native": "native"}
MODES = ("inference", "training step")
# Relative error allowed between a converted model's inference output and torch eager's (float32, deep nets).
TOLERANCE = 1e-3


class ModelSpec:
    """One benchmarked model: name, torchvision builder name (or "tinyvgg"), batch, input (C, H, W), classes,
    frozen: train only the parameters outside `features.` (transfer learning)."""

    def __init__(self, name, builder, batch, chw, classes=1000, frozen=False, kwargs=None):
        self.name, self.builder, self.batch, self.chw = name, builder, batch, tuple(chw)
        self.classes, self.frozen, self.kwargs = classes, frozen, dict(kwargs or {})

    @property
    def input_shape(self):
        return (self.batch,) + self.chw

    @property
    def label(self):
        return f"{self.name} {'x'.join(map(str, self.input_shape))}"

    def build(self, seed=0):
        """The torch model, random weights (the same for a given seed)."""
        torch.manual_seed(seed)
        if self.builder == "tinyvgg":
            c, h, _ = self.chw
            return TinyVGG(in_channels=c, hidden=10, classes=self.classes, size=h)
        import torchvision

        return getattr(torchvision.models, self.builder)(weights=None, num_classes=self.classes, **self.kwargs)

    def inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*self.input_shape, generator=g), torch.randint(0, self.classes, (self.batch,), generator=g)


# Sizes chosen so that the whole suite (eager, auto, native; 5 rounds) runs in about 10-15 minutes on a
# shared 2-core CPU; the big models at batch 4-8 and 112x112 or 128x128.
MODELS = [
    ModelSpec("tinyvgg", "tinyvgg", 1, (1, 28, 28), classes=10),
    ModelSpec("tinyvgg", "tinyvgg", 32, (1, 28, 28), classes=10),
    ModelSpec("vgg11", "vgg11", 4, (3, 64, 64)),
    ModelSpec("resnet18", "resnet18", 8, (3, 112, 112)),
    ModelSpec("resnet50", "resnet50", 4, (3, 112, 112)),
    ModelSpec("mobilenet_v2", "mobilenet_v2", 8, (3, 128, 128)),
    ModelSpec("mobilenet_v3_small", "mobilenet_v3_small", 8, (3, 128, 128)),
    ModelSpec("efficientnet_b0", "efficientnet_b0", 4, (3, 128, 128)),
    ModelSpec("efficientnet_b0 frozen features", "efficientnet_b0", 4, (3, 128, 128), frozen=True),
    ModelSpec("convnext_tiny", "convnext_tiny", 4, (3, 112, 112)),
    ModelSpec("regnet_y_400mf", "regnet_y_400mf", 8, (3, 128, 128)),
]
QUICK_MODELS = [
    ModelSpec("tinyvgg", "tinyvgg", 1, (1, 28, 28), classes=10),
    ModelSpec("resnet18", "resnet18", 2, (3, 32, 32), classes=10),  # BatchNorm trains on > 1 value
    ModelSpec("mobilenet_v3_small frozen features", "mobilenet_v3_small", 2, (3, 32, 32), classes=10, frozen=True),
]


def freeze_features(model):
    """Transfer learning: no gradient for the feature extractor (parameters under `features.`)."""
    for name, p in model.named_parameters():
        if name.startswith("features."):
            p.requires_grad_(False)
    return model


def max_rel_error(out, ref):
    ref = ref.detach().double()
    err = (out.detach().double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
    return err if err == err else math.inf


def _report_fields(report):
    if report is None:
        return {"converted": None, "converted_layers": "", "fused": None, "pooled": None, "left": None,
                "left_layers": ""}
    return {
        "converted": len(report.converted),
        "converted_layers": " ".join(f"{c.name}:{c.torch_type}" + (f"+{c.activation}" if c.activation and
                                                                    c.activation != "none" else "")
                                     for c in report.converted),
        "fused": len(report.fused),
        "pooled": len(report.pooled),
        "left": len(report.left),
        "left_layers": " ".join(f"{entry.name}:{entry.type}" for entry in report.left),
    }


def _callable(model, mode, x, y):
    """The timed call: one inference, or one training step."""
    if mode == "inference":
        model.eval()

        def infer():
            with torch.no_grad():
                return model(x)

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _build_provider(provider, spec, mode, torch_model):
    """(model, report, reason): the model the provider runs, a copy of torch_model."""
    model = copy.deepcopy(torch_model)
    model.train(mode != "inference")
    report = None
    if provider in BACKENDS:
        model, report = dlkernels.convert(model, backend=BACKENDS[provider], return_report=True)
    if spec.frozen:
        freeze_features(model)  # after the conversion: state_dict names are kept, so the same parameters
    if provider == "torch_compile":
        torch._dynamo.reset()
        model = torch.compile(model)
    return model, report


def run_model(spec, mode, providers, rounds, budget, log=print):
    """Rows for one model in one mode: one per provider."""
    torch_model = spec.build()
    x, y = spec.inputs()
    rows, fns = [], {}
    ref = None
    with torch.no_grad():
        ref = torch_model.eval()(x)
    for provider in providers:
        row = {"model": spec.name, "builder": spec.builder, "batch": spec.batch,
               "input": "x".join(map(str, spec.input_shape)), "frozen": spec.frozen, "mode": mode,
               "provider": provider, "status": "", "reason": "", "median_s": None, "min_s": None, "max_s": None,
               "calls_per_round": None, "rounds": None, "compile_s": None, "max_err": None,
               "vs_eager": None, "vs_eager_min": None, "vs_eager_max": None,
               "vs_compile": None, "vs_compile_min": None, "vs_compile_max": None}
        rows.append(row)
        try:
            model, report = _build_provider(provider, spec, mode, torch_model)
            row.update(_report_fields(report))
            if provider in BACKENDS:  # (torch.compile is torch's own: its first call must be the timed one)
                with torch.no_grad():
                    was = model.training
                    out = model.eval()(x)
                    model.train(was)
                row["max_err"] = max_rel_error(out, ref)
                if row["max_err"] > TOLERANCE:
                    row.update(status="wrong", reason=f"max error {row['max_err']:.3g} > {TOLERANCE:g}: not timed")
                    continue
            fn = _callable(model, mode, x, y)
            start = time.perf_counter()
            fn()  # the first call: compiles (torch.compile), resolves the backends, warms the allocator
            first = time.perf_counter() - start
            if provider == "torch_compile":
                row["compile_s"] = first
                fn()  # a second compile can happen (e.g. the backward's, or a guard), never timed
            fns[provider] = fn
        except Exception as error:  # noqa: BLE001 (reported in the row, the run goes on)
            row.update(status="error", reason=f"{type(error).__name__}: {error}".splitlines()[0][:200])
    if not fns:
        for row in rows:
            log(_line(row))
        return rows
    times, calls = in_turn(fns, rounds, budget)
    for row in rows:
        p = row["provider"]
        if p not in times:
            continue
        t = times[p]
        row.update(status="ok", median_s=statistics.median(t), min_s=min(t), max_s=max(t), calls_per_round=calls,
                   rounds=rounds)
        for base, key in (("torch_eager", "vs_eager"), ("torch_compile", "vs_compile")):
            if base in times:
                row.update(zip((key, key + "_min", key + "_max"), ratio_stats(times[base], t)))
    for row in rows:
        log(_line(row))
    return rows


def _line(row):
    if row["status"] != "ok":
        return f"  {row['model']:34s} {row['mode']:13s} {row['provider']:13s} {row['status']}: {row['reason']}"
    ratio = ""
    if row["provider"] != "torch_eager" and row["vs_eager"]:
        ratio = f"  vs eager {row['vs_eager']:.2f}x ({row['vs_eager_min']:.2f}-{row['vs_eager_max']:.2f})"
    if row["provider"].startswith("dlk") and row["vs_compile"]:
        ratio += f"  vs compile {row['vs_compile']:.2f}x"
    comp = f"  compile {row['compile_s']:.1f} s" if row["compile_s"] else ""
    conv = f"  [{row['converted']} converted]" if row.get("converted") is not None else ""
    return (f"  {row['model']:34s} {row['mode']:13s} {row['provider']:13s} {row['median_s'] * 1e3:9.2f} ms"
            f"{ratio}{comp}{conv}")


def geomean_rows(rows):
    """One row per (mode, provider): the geometric mean of its ratios over the models (model "geomean")."""
    out = []
    for mode in MODES:
        for provider in PROVIDERS:
            ok = [r for r in rows if r["mode"] == mode and r["provider"] == provider and r["status"] == "ok"]
            if not ok:
                continue
            row = {"model": "geomean", "mode": mode, "provider": provider, "status": "ok", "reason": "",
                   "models": len(ok)}
            for key in ("vs_eager", "vs_compile"):
                for suffix in ("", "_min", "_max"):
                    vals = [r[key + suffix] for r in ok if r.get(key + suffix)]
                    if vals and len(vals) == len(ok):
                        row[key + suffix] = math.exp(sum(map(math.log, vals)) / len(vals))
            if provider in BACKENDS and row.get("vs_eager"):
                worst = min(ok, key=lambda r: r["vs_eager"])
                row["reason"] = f"worst: {worst['model']} {worst['input']} {worst['vs_eager']:.2f}x"
            out.append(row)
    return out


def run(quick=False, rounds=None, budget=None, compile_models=False, log=print, max_seconds=None, only=None):
    """All rows (per model, mode and provider, then the geomean rows)."""
    specs = QUICK_MODELS if quick else MODELS
    if only:
        specs = [s for s in specs if any(o.lower() in s.label.lower() for o in only)]
    rounds = rounds or (2 if quick else 5)
    budget = budget or (0.02 if quick else 0.6)
    providers = [p for p in PROVIDERS if p != "torch_compile" or compile_models]
    if compile_models:
        # No FX graph cache: compile_s would otherwise depend on earlier runs (the built kernels' cache stays).
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
    rows = []
    start = time.perf_counter()
    for spec in specs:
        for mode in MODES:
            if max_seconds and time.perf_counter() - start > max_seconds:
                rows += [{"model": spec.name, "batch": spec.batch, "input": "x".join(map(str, spec.input_shape)),
                          "mode": mode, "provider": p, "status": "skipped",
                          "reason": f"--max-seconds {max_seconds:g} spent"} for p in providers]
                continue
            log(f"{spec.label} {mode} ({time.perf_counter() - start:.0f} s)")
            rows += run_model(spec, mode, providers, rounds, budget, log=log)
    return rows + geomean_rows(rows)


COLUMNS = ["model", "builder", "batch", "input", "frozen", "mode", "provider", "status", "reason", "median_s",
           "min_s", "max_s", "calls_per_round", "rounds", "compile_s", "max_err", "vs_eager", "vs_eager_min",
           "vs_eager_max", "vs_compile", "vs_compile_min", "vs_compile_max", "converted", "fused", "pooled", "left",
           "converted_layers", "left_layers", "models"]


def normalise(rows):
    return [{k: row.get(k) for k in COLUMNS} for row in rows]


def table(rows):
    """The Markdown table: per model and mode, the time of torch eager and each provider's ratio (range)."""
    providers = [p for p in PROVIDERS if p != "torch_eager" and any(r["provider"] == p for r in rows)]
    head = "| model | input | mode | eager (ms) | " + " | ".join(f"{p} vs eager" for p in providers)
    if any(r["provider"] == "torch_compile" and r["status"] == "ok" for r in rows):
        head += " | " + " | ".join(f"{p} vs compile" for p in providers if p.startswith("dlk"))
        head += " | compile (s)"
        with_compile = True
    else:
        with_compile = False
    head += " | converted |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keys = list(dict.fromkeys((r["model"], r.get("input"), r["mode"]) for r in rows))
    for model, inp, mode in keys:
        group = {r["provider"]: r for r in rows if (r["model"], r.get("input"), r["mode"]) == (model, inp, mode)}
        eager = group.get("torch_eager", {})
        cells = [model, inp or "", mode,
                 f"{eager['median_s'] * 1e3:.1f}" if eager.get("median_s") else "-"]
        for p in providers:
            cells.append(_ratio_cell(group.get(p), "vs_eager"))
        if with_compile:
            cells += [_ratio_cell(group.get(p), "vs_compile") for p in providers if p.startswith("dlk")]
            c = group.get("torch_compile", {}).get("compile_s")
            cells.append(f"{c:.0f}" if c else "-")
        conv = next((group[p].get("converted") for p in ("dlk_auto", "dlk_native") if p in group
                     and group[p].get("converted") is not None), None)
        cells.append("-" if conv is None else str(conv))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_cell(row, key):
    if not row:
        return "-"
    if row.get("status") != "ok" or not row.get(key):
        return row.get("status") or "-"
    return f"{row[key]:.2f} ({row[key + '_min']:.2f}-{row[key + '_max']:.2f})"


def plot(path, rows, meta):
    """Bars: each provider's ratio to torch eager per model, inference and training step side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    providers = [p for p in PROVIDERS if p != "torch_eager" and any(r["provider"] == p for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    for ax, mode in zip(axes, MODES):
        keys = list(dict.fromkeys(f"{r['model']} {r.get('input') or ''}".strip() for r in rows if r["mode"] == mode))
        width = 0.8 / max(len(providers), 1)
        for i, p in enumerate(providers):
            vals, lo, hi = [], [], []
            for k in keys:
                r = next((r for r in rows if r["mode"] == mode and r["provider"] == p and
                          f"{r['model']} {r.get('input') or ''}".strip() == k), None)
                v = r.get("vs_eager") if r else None
                vals.append(v or 0)
                lo.append((v - r["vs_eager_min"]) if v and r.get("vs_eager_min") else 0)
                hi.append((r["vs_eager_max"] - v) if v and r.get("vs_eager_max") else 0)
            ax.barh([j + i * width for j in range(len(keys))], vals, height=width, xerr=[lo, hi], label=p,
                    capsize=2)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_yticks([j + 0.4 - width / 2 for j in range(len(keys))])
        ax.set_yticklabels(keys, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(mode)
        ax.set_xlabel("torch eager time / provider time (> 1: faster)")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"dlkernels models: {meta['device_name']} ({meta['threads']} threads, {meta['time_utc'][:10]}, "
                 f"{meta['git_commit'][:8]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
