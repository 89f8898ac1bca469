"""The roofline's third regime, per-call overhead: tiny shapes where the arithmetic and the bytes cost next
to nothing and the time is the Python API, the dispatcher and autograd. `python -m benchmarks --suite
overhead`.

Each case times one call of a dlkernels entry point against what it replaces in torch, on the same inputs:
- functional: dlkernels.ops.<op>(...)            vs torch's composite (F.relu(F.linear(x, W, b)), ...);
- raw op:     torch.ops.dlkernels.<op>(...)       vs the same composite;
- layer:      a converted nn.Sequential(layer, act) vs the torch nn.Sequential it came from;
each without autograd (nothing requires grad: torch.no_grad() for the layers) and with autograd recording
(x requires grad; the forward only, which is where the recording costs). And TinyVGG at batch 1, converted vs
torch: inference, and a training step (forward, cross-entropy, backward, SGD step).

One intra-op thread (torch.set_num_threads(1), recorded in the results): at these sizes nothing is worth
splitting, and on a shared 2-core machine torch's OpenMP threads wait on a busy core for milliseconds
(F.conv2d on a 1x3x8x8 input took 15 ms per call with 2 threads while another job ran).

The raw op rows also time torch's own ops called the same way, through torch.ops (torch.ops.aten.<op> with
the same Python arguments; column torch_ops_us): torch.ops' generic binding (schema matching, an IValue per
argument, a __torch_function__ check of every element of every int list) costs more than the codegen'd
binding of torch.<op>, and this column shows what that route costs torch itself.

Timing: mean time per call over a loop of calls (time.perf_counter), ours and torch's alternated in rounds
so that both see the same load; each round gives a ratio, and the table shows the median and the range (min
to max) over the rounds. This shared machine moves 10-30% between runs: read ratios, not absolute times.
"""
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import dlkernels

from . import report
from .models import TinyVGG

# The goal of each kind of call: dlkernels time / torch time at most this (README).
GOALS = {
    "functional": 1.3,
    "raw op": 1.1,
    "functional+autograd": 1.3,
    "raw op+autograd": 1.3,
    "layer": 1.0,
    "layer+autograd": 1.0,
    "model inference": 1.0,
    "model training step": 1.0,
}


def _linear_case():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in ((1, 16), (16, 16), (16,)))
    torch_layer = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    calls = {
        "functional": (lambda x: dlkernels.ops.linear_act(x, w, b, activation="relu"),
                       lambda x: F.relu(F.linear(x, w, b))),
        "raw op": (lambda x: torch.ops.dlkernels.linear_act(x, w, b, "relu", 0.0, 0.0),
                   lambda x: F.relu(F.linear(x, w, b)),
                   lambda x: torch.ops.aten.relu(torch.ops.aten.linear(x, w, b))),
    }
    return "linear_act", "x 1x16, W 16x16, relu", x, calls, torch_layer


def _conv_case():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g) for s in ((1, 3, 8, 8), (4, 3, 3, 3), (4,)))
    torch_layer = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    calls = {
        "functional": (lambda x: dlkernels.ops.conv2d(x, w, b, padding=1, activation="relu"),
                       lambda x: F.relu(F.conv2d(x, w, b, padding=1))),
        "raw op": (lambda x: torch.ops.dlkernels.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", 0.0, 0.0),
                   lambda x: F.relu(F.conv2d(x, w, b, padding=1)),
                   lambda x: torch.ops.aten.relu(torch.ops.aten.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1))),
    }
    return "conv2d", "x 1x3x8x8, W 4x3x3x3, pad 1, relu", x, calls, torch_layer


def _pool_case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    torch_layer = nn.Sequential(nn.MaxPool2d(2))
    calls = {
        "functional": (lambda x: dlkernels.ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
        "raw op": (lambda x: torch.ops.dlkernels.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False),
                   lambda x: F.max_pool2d(x, 2),
                   lambda x: torch.ops.aten.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)),
    }
    return "max_pool2d", "x 1x4x8x8, kernel 2", x, calls, torch_layer


def _per_call(fn, x, calls, grad):
    """Mean seconds per call of fn(x) over `calls` calls."""
    with torch.set_grad_enabled(grad):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        return (time.perf_counter() - start) / calls


def build_cases():
    """[(op, shape, kind, ours, theirs, torch_ops, x, grad)]: the calls to compare, per op and kind; torch_ops is
    torch's composite through torch.ops for the raw op rows, None for the others."""
    cases = []
    for op, shape, x, calls, torch_layer in (_linear_case(), _conv_case(), _pool_case()):
        ours_layer = dlkernels.convert(copy.deepcopy(torch_layer), backend="native")
        calls = dict(calls, layer=(ours_layer, torch_layer))
        xg = x.clone().requires_grad_()
        for kind, (ours, theirs, *torch_ops) in calls.items():
            torch_ops = torch_ops[0] if torch_ops else None
            cases.append((op, shape, kind, ours, theirs, torch_ops, x, False))
            # max_pool2d's plain op computes the indices itself when autograd records (as torch's does): the
            # call dlkernels.ops makes with or without gradients.
            cases.append((op, shape, kind + "+autograd", ours, theirs, torch_ops, xg, True))
    return cases


def _model_calls(quick):
    torch.manual_seed(0)
    model = TinyVGG(in_channels=1, hidden=10, classes=10, size=28)
    ours = dlkernels.convert(copy.deepcopy(model), backend="native")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (1,), generator=g)

    def inference(m):
        m.eval()
        return lambda x: m(x)

    def training(m):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)

        def step(x):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()

        return step

    return [
        ("model", "TinyVGG 1x1x28x28", "model inference", inference(ours), inference(model), None, x, False),
        ("model", "TinyVGG 1x1x28x28", "model training step", training(ours), training(model), None, x, True),
    ]


def run(quick=False, rounds=None, budget=None, log=print):
    """Rows: one per case, with the per-call times (median over rounds) and the ratio's median and range."""
    rounds = rounds or (5 if quick else 10)
    budget = budget or (0.02 if quick else 0.1)  # seconds per measurement
    cases = build_cases() + _model_calls(quick)
    rows = []
    for op, shape, kind, ours, theirs, torch_ops, x, grad in cases:
        # Warm up all (first calls resolve the backend, load kernels), then size the loop to the budget.
        fns = [fn for fn in (ours, theirs, torch_ops) if fn is not None]
        for fn in fns:
            _per_call(fn, x, 20, grad)
        per = max(_per_call(fn, x, 50, grad) for fn in fns)
        calls = max(5, int(budget / per))
        ours_t, theirs_t, torch_ops_t, ratios = [], [], [], []
        for r in range(rounds):
            timed = [(ours, ours_t), (theirs, theirs_t)] + ([(torch_ops, torch_ops_t)] if torch_ops else [])
            for fn, times in (timed if r % 2 == 0 else timed[::-1]):  # alternate which goes first
                times.append(_per_call(fn, x, calls, grad))
            ratios.append(ours_t[-1] / theirs_t[-1])
        row = {
            "op": op,
            "shape": shape,
            "kind": kind,
            "calls_per_round": calls,
            "rounds": rounds,
            "dlkernels_us": round(statistics.median(ours_t) * 1e6, 2),
            "torch_us": round(statistics.median(theirs_t) * 1e6, 2),
            "torch_ops_us": round(statistics.median(torch_ops_t) * 1e6, 2) if torch_ops_t else None,
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "goal": GOALS[kind],
        }
        row["meets_goal"] = row["ratio"] <= row["goal"]
        rows.append(row)
        via_ops = f"  (torch via torch.ops {row['torch_ops_us']:.2f} us)" if torch_ops_t else ""
        log(f"{op:10s} {kind:22s} dlkernels {row['dlkernels_us']:8.2f} us  torch {row['torch_us']:8.2f} us  "
            f"ratio {row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}), goal <= {row['goal']}"
            f"{via_ops}")
    return rows


def table(rows):
    """The Markdown table of the README."""
    lines = ["| op | call | dlkernels (us) | torch (us) | ratio (range) | goal | torch via torch.ops (us) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        via_ops = "" if r.get("torch_ops_us") is None else f"{r['torch_ops_us']:.1f}"
        lines.append(f"| {r['op']} | {r['kind']} | {r['dlkernels_us']:.1f} | {r['torch_us']:.1f} | "
                     f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | <= {r['goal']} | {via_ops} |")
    return "\n".join(lines)


def write(out_dir, stem, rows, meta):
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    report.write_csv(os.path.join(out_dir, stem + ".csv"), rows, meta)
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return os.path.join(out_dir, stem + ".csv"), os.path.join(out_dir, stem + ".json")
