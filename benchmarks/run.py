"""The command line and the loop: ceilings, then for each case, dtype and mode: check every provider against
the float64 reference, time the correct ones, place them on the roofline; then the table, files and plot."""
import argparse
import datetime
import functools
import itertools
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from . import cases as cases_mod
from . import ceilings as ceilings_mod
from . import providers as providers_mod
from . import report, timing

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# Error allowed against the float64 reference, as max|out - ref| / max|ref|, per dtype; a provider is also
# allowed twice torch eager's own error in the dtype (plus one epsilon), as the tests do for half types.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
MAX_ROTATION_SETS = 16


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def split(values):
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer, smaller cases and shorter timing (CPU: < 1 min)")
    p.add_argument("--suite", default="default", choices=cases_mod.SUITES,
                   help="default: the roofline cases; cpu-goals: the shapes of the CPU performance goals; block: "
                        "the fused Conv -> ReLU -> MaxPool block (TinyVGG and VGG shapes, TinyVGG converted); "
                        "overhead: per-call overhead; models: whole torchvision models converted (inference and "
                        "a training step); layers: every conv2d / linear / max_pool2d shape of those models")
    p.add_argument("--op", action="append", help=f"ops to run, comma-separated: {', '.join(cases_mod.OPS)}")
    p.add_argument("--dtype", action="append",
                   help="dtypes, comma-separated (float32, bfloat16, float16, float64); default: float32 on the "
                        "CPU, bfloat16,float32 on CUDA (bfloat16 with --quick)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--provider", action="append",
                   help=f"providers, comma-separated: {', '.join(providers_mod.PROVIDERS)} (aliases: eager, compile, "
                        "native, triton); torch_eager always runs: it is the baseline")
    p.add_argument("--mode", action="append", help=f"modes, comma-separated: {', '.join(cases_mod.MODES)}")
    p.add_argument("--shapes", action="append",
                   help="keep cases whose 'group/label' contains one of these comma-separated substrings "
                        "(case-insensitive), e.g. vgg, resnet, tinyvgg, 'M=1 ', NHWC")
    p.add_argument("--out", help="results folder (default: benchmark-results/<device-slug>, untracked); the "
                                 "committed reference results are updated only when asked, with "
                                 "--out benchmarks/results/<device-slug>")
    p.add_argument("--name", help="file stem of the results (default: roofline, or roofline-quick with --quick)")
    p.add_argument("--budget", type=float, help="seconds of timing per measurement (default 0.15 CPU, 0.1 GPU; "
                                               "halved with --quick)")
    p.add_argument("--max-seconds", type=float, help="start no new case after this many seconds; the rest are "
                                                    "reported as skipped")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds to wait at most for a busy machine to become idle before timing (default 60; 0: "
                        "do not wait)")
    p.add_argument("--rounds", type=int,
                   help="time the providers of each case in turn, this many times each, and report the median of "
                        "the rounds (steadier ratios on a shared machine; default 1: one after the other; "
                        "--suite models: 5, --suite layers: 3, 2 with --quick)")
    p.add_argument("--compile", action="store_true",
                   help="--suite models: time torch.compile too (its compile time reported apart, in compile_s); "
                        "off by default: compiling every model forward and backward takes long on a small CPU")
    p.add_argument("--threads", type=int, help="CPU threads for torch and dlkernels (default: torch's, all cores); "
                                               "1 measures one core, steadier on a shared machine")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for float32 matmul/conv on CUDA (off by default)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--datasheet", action="store_true", help="print the datasheet peaks and exit")
    return p.parse_args(argv)


def select_cases(all_cases, ops, modes, shapes):
    ops = ops or list(cases_mod.OPS)
    for op in ops:
        if op not in cases_mod.OPS:
            raise SystemExit(f"unknown op {op!r}; expected one of {', '.join(cases_mod.OPS)}")
    for mode in modes:
        if mode not in cases_mod.MODES:
            raise SystemExit(f"unknown mode {mode!r}; expected one of {', '.join(cases_mod.MODES)}")
    selected = []
    for case in all_cases:
        if case.op not in ops or not any(m in case.modes for m in modes):
            continue
        if shapes and not any(s.lower() in case.name.lower() for s in shapes):
            continue
        selected.append(case)
    return selected


def git(*args):
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def collect_meta(device, args, quick):
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    import dlkernels
    from dlkernels import _ext

    name = ceilings_mod.device_name(device)
    if device.type == "cpu":
        slug = report.slug(f"cpu {name} {ceilings_mod.cpu_vector_isa()} {os.cpu_count()}c")
    else:
        slug = report.slug(name)
    return {
        "device": str(device),
        "device_name": name,
        "device_slug": slug,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": triton_version,
        "dlkernels": dlkernels.__version__,
        "native_loaded": _ext.loaded(),
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tf32": bool(args.tf32) if device.type == "cuda" else False,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else False,
        "quick": quick,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "cpu_vector_isa": ceilings_mod.cpu_vector_isa() if device.type == "cpu" else "",
    }


def busy_cores(seconds=1.0):
    """How many cores other work keeps busy now, from /proc/stat over `seconds` (None where there is no
    /proc/stat). Unlike the load average, which decays over minutes, this is idle right after a build ends."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def wait_until_idle(max_seconds, threshold=0.5):
    """Waits up to max_seconds while other work keeps more than `threshold` cores busy, saying so; returns the
    busy cores measured last (stored with the results)."""
    busy = busy_cores()
    if busy is None or busy <= threshold:
        return busy
    print(f"the machine is busy: other work keeps {busy:.1f} of {os.cpu_count()} cores busy; waiting up to "
          f"{max_seconds:g} s for it to settle (--settle)", flush=True)
    deadline = time.monotonic() + max_seconds
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_cores(2.0)
    if busy > threshold:
        print(f"warning: the machine is still busy ({busy:.1f} cores): timings will be noisy and slow", flush=True)
    else:
        print("the machine is idle now", flush=True)
    return busy


class _Progress:
    """tqdm when installed, else a line per step on stderr."""

    def __init__(self, total, desc):
        self.bar = None
        if sys.stderr.isatty():  # a log file gets one line per step instead
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, label):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label[:60], refresh=False)
            self.bar.update(1)
        else:
            elapsed = time.perf_counter() - self.start
            print(f"[{self.done}/{self.total} {elapsed:4.0f}s] {label}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def max_error(out, ref):
    """max |out - ref| / max |ref| over every output tensor (dicts matched by key); inf on a shape mismatch."""
    if isinstance(ref, dict):
        keys = [k for k in ref if k in out] if isinstance(out, dict) else []
        if not keys:
            return math.inf
        pairs = [(out[k], ref[k]) for k in keys]
    else:
        if isinstance(out, dict) or len(out) != len(ref):
            return math.inf
        pairs = list(zip(out, ref))
    worst = 0.0
    for a, r in pairs:
        if a is None or r is None:
            if a is not r:
                return math.inf
            continue
        if tuple(a.shape) != tuple(r.shape):
            return math.inf
        if r.numel() == 0:
            continue
        r = r.detach().double()
        diff = (a.detach().double() - r).abs().max().item()
        scale = max(r.abs().max().item(), 1e-30)
        err = diff / scale
        if err != err:
            return math.inf
        worst = max(worst, err)
    return worst


def count_ops(call):
    """How many non-view aten ops one call runs (an estimate of its kernel launches)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not getattr(func, "is_view", False) and func.__name__.split(".")[0] not in ("detach", "empty", "t"):
                Counter.n += 1
            return func(*args, **(kwargs or {}))

    try:
        with Counter():
            call()
    except Exception:  # noqa: BLE001 (an estimate: fall back to one op)
        return 1
    return max(Counter.n, 1)


def rotation_sets(case, device, dtype, mode):
    """How many input sets to rotate through so that one pass over them overflows the last-level cache."""
    sample = case.make_inputs(device, dtype, seed=0)
    per_set = max(case.input_bytes(sample), 1)
    cache = ceilings_mod.cache_bytes(device)
    limit = (4 << 30) if device.type == "cuda" else (1 << 30)
    n = math.ceil(2 * cache / per_set)
    return max(1, min(n, MAX_ROTATION_SETS, max(limit // per_set, 1)))


def _base_row(case, mode, dtype, provider):
    return {
        "op": case.op, "group": case.group, "case": case.label, "mode": mode, "dtype": dtype_name(dtype),
        "provider": provider, "status": "", "reason": "",
        "flops": None, "bytes": None, "bytes_extra_unfused": None, "intensity": None,
        "median_s": None, "p20_s": None, "p80_s": None, "calls": None, "timer": "", "rotation_sets": None,
        "tflops": None, "gbps": None, "bound": "", "bound_flops": None, "fraction": None, "regime": "",
        "t_memory_s": None, "t_compute_s": None, "t_overhead_s": None, "n_ops": None,
        "speedup": None, "max_err": None, "err_bound": None, "saved_bytes": None,
    }


def default_left_out(device, quick, explicit):
    """left_out(case) -> {provider: reason}: what a default CPU run skips to stay within a few minutes (compile
    time on 2 cores). Naming providers with --provider runs them all."""
    def left_out(case):
        if explicit or device.type != "cpu":
            return {}
        if quick:
            return {"torch_compile": "left out of --quick on the CPU (compile time); pass --provider eager,compile"}
        if case.op == "model" and case.params["model"] == "vgg11":
            return {"torch_compile": "vgg11 compiles for minutes on a small CPU; pass --provider eager,compile"}
        return {}
    return left_out


def run_case(case, dtype, modes, providers, device, ceilings, budget, progress=None, left_out=None, rounds=1):
    """Rows for one case in one dtype: every mode x provider. left_out(case): {provider: reason} not to run.
    rounds > 1: the providers are timed in turn, `rounds` times each (budget / rounds per turn), and each row
    reports the median (p20, p80) of its per-round medians: a load that comes and goes on a shared machine
    then falls on every provider alike, which makes the ratios steadier."""
    rows = []
    itemsize = torch.empty(0, dtype=dtype).element_size()
    impls = {}
    peak = ceilings["flops"].get(dtype_name(dtype)) or max(ceilings["flops"].values())
    for mode in [m for m in cases_mod.MODES if m in modes and m in case.modes]:
        if progress:
            progress.step(f"{case.op} {case.label} {mode} {dtype_name(dtype)}")
        flops = case.flops(mode)
        nbytes = case.bytes(mode, itemsize)
        try:
            n_sets = rotation_sets(case, device, dtype, mode)
            sets = [case.make_inputs(device, dtype, seed=i, requires_grad=mode != "forward") for i in range(n_sets)]
            reference = case.reference_outputs(mode, sets[0])
            setup_error = None
        except Exception as error:  # noqa: BLE001 (e.g. out of memory for the float64 reference)
            n_sets, sets, reference = 0, [], None
            setup_error = "inputs or float64 reference failed: " + providers_mod._first_line(error)
        baseline = {}
        mode_rows = []
        pending = []  # (row, provider, impl) checked and waiting for their turns (rounds > 1)

        def finish(row, provider, impl, t, inputs):
            row.update(status="ok", median_s=t.median, p20_s=t.p20, p80_s=t.p80, calls=t.n, timer=t.method,
                       tflops=flops / t.median / 1e12, gbps=nbytes / t.median / 1e9)
            if mode != "forward" and hasattr(case, "saved_bytes"):  # the memory kept for the backward
                row["saved_bytes"] = case.saved_bytes(impl, inputs)
            if provider == providers_mod.BASELINE:
                baseline["median"] = t.median

        for provider in providers:
            row = _base_row(case, mode, dtype, provider)
            row.update(flops=flops, bytes=nbytes, intensity=flops / nbytes, rotation_sets=n_sets,
                       bytes_extra_unfused=case.extra_bytes_unfused(itemsize) if mode == "forward" else 0)
            mode_rows.append(row)
            reason = (left_out(case) if left_out else {}).get(provider) or \
                providers_mod.unavailable(provider, case, mode, device)
            if reason:
                row.update(status="skipped", reason=reason)
                continue
            if setup_error:
                row.update(status="error", reason=setup_error)
                continue
            try:
                if provider not in impls:
                    impls[provider] = providers_mod.build(provider, case, device, dtype)
                impl = impls[provider]
                out = case.bind(impl, mode, sets[0])()
                timing.synchronize(device)
                err = max_error(out, reference)
                del out
                if provider == providers_mod.BASELINE:
                    baseline["err"] = err
                    bound = max(TOLERANCE[dtype], err)
                else:
                    bound = max(TOLERANCE[dtype], 2 * baseline.get("err", 0.0) + torch.finfo(dtype).eps)
                row.update(max_err=err, err_bound=bound)
                if err > bound:
                    row.update(status="wrong", reason=f"max error {err:.3g} > allowed {bound:.3g}: not timed")
                    continue
                if provider == providers_mod.BASELINE:
                    baseline["n_ops"] = count_ops(case.bind(impl, mode, sets[0]))
                if rounds > 1:  # timed below, in turn with the other providers
                    pending.append((row, provider, impl))
                    continue
                # The call cycle lives only inside measure(): the bound inputs are freed when it returns.
                t = timing.measure(_round_robin([case.bind(impl, mode, s) for s in sets]), device, budget)
            except Exception as error:  # noqa: BLE001 (reported in the row, the run goes on)
                row.update(status="error", reason=providers_mod._first_line(error))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            finish(row, provider, impl, t, sets[0])
        if pending:
            cycles = [_round_robin([case.bind(impl, mode, s) for s in sets]) for _, _, impl in pending]
            medians = [[] for _ in pending]
            for _ in range(rounds):
                for i, fn in enumerate(cycles):
                    medians[i].append(timing.measure(fn, device, budget / rounds).median)
            del cycles
            for (row, provider, impl), m in zip(pending, medians):
                t = timing.Timing(statistics.median(m), timing._quantile(m, 0.2), timing._quantile(m, 0.8), len(m),
                                  f"{rounds} rounds in turn")
                finish(row, provider, impl, t, sets[0])
        line = report.roofline(flops, nbytes, ceilings["memory_bandwidth"], peak, ceilings["overhead_s"],
                               baseline.get("n_ops", 1))
        for row in mode_rows:
            row.update(bound=line["bound"], bound_flops=line["bound_flops"], regime=line["regime"],
                       t_memory_s=line["t_memory_s"], t_compute_s=line["t_compute_s"],
                       t_overhead_s=line["t_overhead_s"], n_ops=baseline.get("n_ops"))
            if row["status"] == "ok":
                row["fraction"] = (flops / row["median_s"]) / line["bound_flops"]
                if baseline.get("median"):
                    row["speedup"] = baseline["median"] / row["median_s"]
        rows += mode_rows
        del sets, reference
    del impls
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def combine_ceilings(first, second):
    """The best of two ceiling measurements (each kept under "runs")."""
    best = dict(first)
    best["memory_bandwidth"] = max(first["memory_bandwidth"], second["memory_bandwidth"])
    best["overhead_s"] = min(first["overhead_s"], second["overhead_s"])
    best["flops"] = {k: max(v, second["flops"].get(k, 0.0)) for k, v in first["flops"].items()}
    best["runs"] = [{k: v for k, v in c.items() if k != "runs"} for c in (first, second)]
    return best


def apply_roofline(rows, ceilings):
    """(Re)computes the roofline fields of every row from its flops, bytes and op count."""
    for row in rows:
        if not row.get("flops") or not row.get("bytes"):
            continue
        peak = ceilings["flops"].get(row["dtype"]) or max(ceilings["flops"].values())
        line = report.roofline(row["flops"], row["bytes"], ceilings["memory_bandwidth"], peak, ceilings["overhead_s"],
                               row.get("n_ops") or 1)
        row.update(bound=line["bound"], bound_flops=line["bound_flops"], regime=line["regime"],
                   t_memory_s=line["t_memory_s"], t_compute_s=line["t_compute_s"], t_overhead_s=line["t_overhead_s"])
        if row["status"] == "ok" and row.get("median_s"):
            row["fraction"] = (row["flops"] / row["median_s"]) / line["bound_flops"]


def _round_robin(calls):
    """One call per invocation, cycling through `calls` (inputs rotated so they do not sit in cache)."""
    cycle = itertools.cycle(calls)
    return lambda: next(cycle)()


class _NoGpuCudaHomeNotice(logging.Filter):
    """torch.compile's C++ backend imports torch.utils.cpp_extension, which on a machine with nvcc and no GPU
    logs "No CUDA runtime is found, using CUDA_HOME=..." (a guess from the nvcc on PATH; plain torch does the
    same). CPU code never uses that toolkit, so the notice says nothing about this run: drop it."""

    def filter(self, record):
        return not record.getMessage().startswith("No CUDA runtime is found")


def run_overhead(args, device):
    """--suite overhead: per-call time of tiny calls against torch (benchmarks/overhead.py), on the CPU."""
    from . import overhead

    if device.type != "cpu":
        raise SystemExit("--suite overhead runs on the CPU (--device cpu)")
    torch.set_num_threads(1)  # see benchmarks/overhead.py
    meta = collect_meta(device, args, args.quick)
    out_dir = args.out or os.path.join(REPO, "benchmark-results", meta["device_slug"])
    stem = args.name or ("overhead-quick" if args.quick else "overhead")
    print(f"dlkernels per-call overhead on {meta['device_name']} ({meta['threads']} threads), torch "
          f"{meta['torch']}, commit {meta['git_commit'][:10]}{' (dirty)' if meta['git_dirty'] else ''}", flush=True)
    rows = overhead.run(quick=args.quick, budget=args.budget)
    csv_path, json_path = overhead.write(out_dir, stem, rows, meta)
    print()
    print(overhead.table(rows))
    print(f"wrote {csv_path}, {json_path}")
    return 0


def run_model_suites(args, device):
    """--suite models (benchmarks/model_suite.py) and --suite layers (benchmarks/layer_suite.py), on the CPU:
    CSV, JSON (with the summary) and PNG under the results folder, a Markdown table / summary on stdout."""
    import json

    from . import layer_suite, model_suite

    if device.type != "cpu":
        raise SystemExit(f"--suite {args.suite} runs on the CPU for now (--device cpu)")
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    meta = collect_meta(device, args, args.quick)
    out_dir = args.out or os.path.join(REPO, "benchmark-results", meta["device_slug"])
    stem = args.name or (args.suite + ("-quick" if args.quick else ""))
    os.makedirs(out_dir, exist_ok=True)
    print(f"dlkernels --suite {args.suite} on {meta['device_name']} ({meta['threads']} threads), torch "
          f"{meta['torch']}, commit {meta['git_commit'][:10]}{' (dirty)' if meta['git_dirty'] else ''}", flush=True)
    meta["busy_cores_at_start"] = wait_until_idle(args.settle)
    start = time.perf_counter()
    only = split(args.shapes)
    log = functools.partial(print, flush=True)  # a log file shows each model / shape as it ends
    torch.manual_seed(0)
    if args.suite == "models":
        config = torch._dynamo.config
        limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit_name, max(getattr(config, limit_name), 64))
        meta["compile"] = bool(args.compile)
        rows = model_suite.normalise(model_suite.run(quick=args.quick, rounds=args.rounds, budget=args.budget,
                                                     compile_models=args.compile, max_seconds=args.max_seconds,
                                                     only=only, log=log))
        extra = {}
        text = model_suite.table(rows)
        draw = model_suite.plot
    else:
        rows = layer_suite.normalise(layer_suite.run(quick=args.quick, rounds=args.rounds, budget=args.budget,
                                                     max_seconds=args.max_seconds, only=only, log=log))
        entries = layer_suite.summary(rows)
        by_kind = layer_suite.summary(rows, by_kind=True)
        extra = {"summary": entries, "summary_by_kind": by_kind}
        text = layer_suite.summary_text(by_kind) + "\n\n" + layer_suite.summary_text(entries)
        draw = layer_suite.plot
    meta["seconds"] = round(time.perf_counter() - start, 1)
    meta["load_avg_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    csv_path = os.path.join(out_dir, stem + ".csv")
    json_path = os.path.join(out_dir, stem + ".json")
    report.write_csv(csv_path, rows, meta)
    with open(json_path, "w") as f:
        json.dump({"meta": meta, **extra, "rows": rows}, f, indent=1, default=str)
    drawn = None if args.no_plot else draw(os.path.join(out_dir, stem + ".png"), rows, meta)
    print()
    print(text)
    print(f"wrote {csv_path}, {json_path}" + (f", {drawn}" if drawn else ""))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "wrong", "error", "skipped")}
    print(f"{len(rows)} rows: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" in {meta['seconds']:.0f} s")
    return 1 if counts["wrong"] or counts["error"] else 0


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("torch.utils.cpp_extension").addFilter(_NoGpuCudaHomeNotice())
    if args.datasheet:
        print(ceilings_mod.datasheet_table())
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.suite == "overhead":
        return run_overhead(args, device)
    if args.suite in ("models", "layers"):
        return run_model_suites(args, device)
    if device.type == "cuda" and not args.list:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but no CUDA device is visible")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True
    quick = args.quick
    default_dtypes = ["float32"] if device.type == "cpu" else (["bfloat16"] if quick else ["bfloat16", "float32"])
    try:
        dtypes = [DTYPES[d.lower()] for d in split(args.dtype) or default_dtypes]
    except KeyError as error:
        raise SystemExit(f"unknown dtype {error.args[0]!r}; expected one of {', '.join(DTYPES)}") from None
    modes = split(args.mode) or list(cases_mod.MODES)
    try:
        providers = providers_mod.resolve(split(args.provider) or providers_mod.PROVIDERS)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    left_out = default_left_out(device, quick, explicit=bool(args.provider))
    if providers_mod.BASELINE not in providers:
        providers.insert(0, providers_mod.BASELINE)
    selected = select_cases(
        cases_mod.build_cases(device.type, quick, args.suite), split(args.op), modes, split(args.shapes)
    )
    if args.list:
        for case in selected:
            print(f"{case.op:11s} {case.name:45s} modes: {', '.join(m for m in case.modes if m in modes)}")
        return 0
    if not selected:
        raise SystemExit("no case matches the filters (see --list)")
    config = torch._dynamo.config  # one compile per case: raise the recompile limit so none falls back to eager
    limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit_name, max(getattr(config, limit_name), 64))
    budget = args.budget or ((0.1 if device.type == "cuda" else 0.15) / (2 if quick else 1))

    meta = collect_meta(device, args, quick)
    out_dir = args.out or os.path.join(REPO, "benchmark-results", meta["device_slug"])
    stem = args.name or ("roofline-quick" if quick else "roofline" if args.suite == "default" else args.suite)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    print(f"dlkernels benchmarks on {meta['device_name']} ({device}, {meta['threads']} threads), torch "
          f"{meta['torch']}, triton {meta['triton']}, commit {meta['git_commit'][:10]}"
          f"{' (dirty)' if meta['git_dirty'] else ''}, tf32 {'on' if meta['tf32'] else 'off'}", flush=True)
    meta["busy_cores_at_start"] = wait_until_idle(args.settle)
    ceiling_dtypes = list(dict.fromkeys(dtypes + [torch.float32]))
    ceilings = ceilings_mod.measure(device, ceiling_dtypes, quick)
    datasheet_name, datasheet = ceilings_mod.datasheet_for(meta["device_name"], device.type, os.cpu_count()) or (
        None,
        None,
    )
    print(report.ceilings_text(ceilings, datasheet_name, datasheet), flush=True)

    csv_path = os.path.join(out_dir, stem + ".csv")
    json_path = os.path.join(out_dir, stem + ".json")
    png_path = os.path.join(out_dir, stem + ".png")
    rows = []
    tasks = [(case, dtype) for case in selected for dtype in dtypes]
    total_steps = sum(len([m for m in case.modes if m in modes]) for case, _ in tasks)
    progress = _Progress(total_steps, "benchmarks")
    torch.manual_seed(0)
    for case, dtype in tasks:
        if args.max_seconds and time.perf_counter() - start > args.max_seconds:
            for mode in [m for m in cases_mod.MODES if m in modes and m in case.modes]:
                progress.step(f"{case.op} {case.label} {mode} (time budget spent)")
                for provider in providers:
                    row = _base_row(case, mode, dtype, provider)
                    row.update(status="skipped", reason=f"--max-seconds {args.max_seconds:g} spent before this case")
                    rows.append(row)
            continue
        rows += run_case(case, dtype, modes, providers, device, ceilings, budget, progress, left_out,
                         rounds=max(1, args.rounds or 1))
        # Written after every case, so that a run stopped by a time limit still leaves its rows.
        report.write_csv(csv_path, rows, meta)
        report.write_json(json_path, rows, meta, ceilings, datasheet_name, datasheet)
    progress.close()

    # The ceilings again at the end: on a shared machine one measurement can be low. Keep the best of the two
    # and place every row on that roofline.
    ceilings = combine_ceilings(ceilings, ceilings_mod.measure(device, ceiling_dtypes, quick))
    apply_roofline(rows, ceilings)
    report.write_csv(csv_path, rows, meta)
    report.write_json(json_path, rows, meta, ceilings, datasheet_name, datasheet)
    drawn = None if args.no_plot else report.plot(png_path, rows, meta, ceilings, datasheet_name, datasheet)
    print()
    report.table(rows)
    print()
    print(report.ceilings_text(ceilings, datasheet_name, datasheet))
    print(
        f"wrote {csv_path}, {json_path}"
        + (
            f", {drawn}"
            if drawn
            else " (no plot: "
            + ("--no-plot" if args.no_plot else "matplotlib is not installed, pip install '.[bench]'")
            + ")"
        )
    )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "wrong", "error", "skipped")}
    print(f"{len(rows)} rows: " + ", ".join(f"{v} {k}" for k, v in counts.items()) +
          f" in {time.perf_counter() - start:.0f} s")
    return 1 if counts["wrong"] or counts["error"] else 0
