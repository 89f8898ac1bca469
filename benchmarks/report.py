"""Roofline arithmetic, the terminal table, the CSV/JSON files and the roofline plot."""
import csv
import json
import math
import os
import re
import sys

# ---------------------------------------------------------------------------------------------------------
# Roofline


def roofline(flops, nbytes, bandwidth, peak, overhead_s, n_ops):
    """The roofline of one case on one machine.

    bound_flops   min(peak, intensity * bandwidth): the best FLOP/s the case can reach here
    bound         "memory" or "compute": which roof is the lower one at this arithmetic intensity
    regime        "memory", "compute" or "overhead": the largest of the three lower bounds on the time:
                  bytes / bandwidth, flops / peak, and n_ops times the cost of one trivial op
    """
    t_memory = nbytes / bandwidth if bandwidth else 0.0
    t_compute = flops / peak if peak else 0.0
    t_overhead = max(n_ops, 1) * overhead_s
    intensity = flops / nbytes if nbytes else math.inf
    bound_flops = min(peak, intensity * bandwidth)
    bound = "memory" if t_memory >= t_compute else "compute"
    regime = max((t_memory, "memory"), (t_compute, "compute"), (t_overhead, "overhead"))[1]
    return {
        "intensity": intensity,
        "bound_flops": bound_flops,
        "bound": bound,
        "regime": regime,
        "t_memory_s": t_memory,
        "t_compute_s": t_compute,
        "t_overhead_s": t_overhead,
        "t_roofline_s": max(t_memory, t_compute),
    }


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# ---------------------------------------------------------------------------------------------------------
# Formatting


def fmt_time(seconds):
    if seconds is None or seconds != seconds:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_num(value, digits=3):
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** 5 or abs(value) < 1e-4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def fmt_rate(value, unit):
    """FLOP/s or bytes/s with an SI prefix: 1.23 TFLOP/s, 456 GB/s."""
    if value is None or value != value:
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


TABLE_COLUMNS = [
    ("op", "op", lambda r: r["op"]),
    ("case", "case", lambda r: r["case"]),
    ("mode", "mode", lambda r: r["mode"]),
    ("dtype", "dtype", lambda r: r["dtype"].replace("float", "f").replace("bf16", "bf16")),
    ("provider", "provider", lambda r: r["provider"]),
    ("median", "median", lambda r: fmt_time(r["median_s"])),
    ("p20-p80", "p20..p80", lambda r: f"{fmt_time(r['p20_s'])}..{fmt_time(r['p80_s'])}" if r["median_s"] else "-"),
    ("tflops", "TFLOP/s", lambda r: fmt_num(r["tflops"])),
    ("gbps", "GB/s", lambda r: fmt_num(r["gbps"])),
    ("ai", "FLOP/B", lambda r: fmt_num(r["intensity"])),
    ("bound", "bound TFLOP/s", lambda r: f"{r['bound'][:3]} {fmt_num(r['bound_flops'] / 1e12)}"),
    ("frac", "%bound", lambda r: f"{100 * r['fraction']:.1f}%" if r["fraction"] is not None else "-"),
    ("regime", "regime", lambda r: r["regime"]),
    ("speedup", "vs eager", lambda r: f"{r['speedup']:.2f}x" if r["speedup"] else "-"),
    ("err", "max err", lambda r: fmt_num(r["max_err"], 2)),
    ("saved", "kept for bwd", lambda r: fmt_bytes(r.get("saved_bytes"))),
    ("status", "status", lambda r: r["status"]),
]


def fmt_bytes(value):
    """A byte count with a binary prefix (the memory a case keeps for its backward); "-" when not measured."""
    if value is None or value == "":
        return "-"
    for prefix, scale in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}iB"
    return f"{value} B"


def table(rows, out=sys.stdout):
    """Prints the measured rows (ok / wrong / error) as a table, then the skipped providers with reasons."""
    shown = [r for r in rows if r["status"] != "skipped"]
    cells = [[c[1] for c in TABLE_COLUMNS]] + [[str(c[2](r)) for c in TABLE_COLUMNS] for r in shown]
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    right = {5, 6, 7, 8, 9, 10, 11, 13, 14, 15}
    lines = []
    previous = None
    for k, row in enumerate(cells):
        key = None if k == 0 else (shown[k - 1]["op"], shown[k - 1]["case"], shown[k - 1]["dtype"])
        if k > 1 and key[:2] != previous[:2]:
            lines.append("")
        previous = key
        lines.append(
            "  ".join(
                cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    print("\n".join(lines), file=out)
    problems = [r for r in shown if r["status"] in ("wrong", "error")]
    for r in problems:
        print(
            f"  {r['status'].upper()}: {r['provider']} on {r['op']} {r['case']} {r['mode']} {r['dtype']}: "
            f"{r['reason']}",
            file=out,
        )
    skipped = {}
    for r in rows:
        if r["status"] == "skipped":
            skipped.setdefault((r["provider"], r["reason"]), []).append(r)
    if skipped:
        print("skipped:", file=out)
        for (provider, reason), rs in skipped.items():
            print(f"  {provider:14s} {len(rs):4d} rows: {reason}", file=out)


def ceilings_text(ceilings, datasheet_name, datasheet):
    lines = [
        f"measured ceilings: copy bandwidth {fmt_rate(ceilings['memory_bandwidth'], 'B/s')} "
        f"({ceilings['copy_bytes'] >> 20} MiB copy), one trivial op {fmt_time(ceilings['overhead_s'])}, "
        f"matmul n={ceilings['matmul_n']}: "
        + ", ".join(f"{k} {fmt_rate(v, 'FLOP/s')}" for k, v in ceilings["flops"].items())
    ]
    if datasheet:
        lines.append(f"datasheet ({datasheet_name}): bandwidth {fmt_rate(datasheet['memory_bandwidth'], 'B/s')}, "
                     + ", ".join(f"{k} {fmt_rate(v, 'FLOP/s')}" for k, v in datasheet["flops"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Files


def write_csv(path, rows, meta):
    fields = list(meta) + [k for k in rows[0] if k not in meta] if rows else list(meta)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**meta, **{k: ("" if v is None else v) for k, v in r.items()}})


def _jsonable(value):
    if isinstance(value, float) and (value != value or value in (math.inf, -math.inf)):
        return None
    return value


def write_json(path, rows, meta, ceilings, datasheet_name, datasheet):
    doc = {
        "meta": meta,
        "ceilings": ceilings,
        "datasheet": {"name": datasheet_name, **datasheet} if datasheet else None,
        "rows": [{**meta, **{k: _jsonable(v) for k, v in r.items()}} for r in rows],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)


MARKERS = {"torch_eager": "o", "torch_compile": "s", "dlk_native": "^", "dlk_triton": "D"}
COLORS = {"linear_act": "tab:blue", "conv2d": "tab:orange", "max_pool2d": "tab:green", "model": "tab:red"}
FILL = {"forward": "full", "backward": "none", "fwd+bwd": "left"}


def plot(path, rows, meta, ceilings, datasheet_name=None, datasheet=None):
    """A log-log roofline: measured ceilings (one roof per dtype), the datasheet's in grey, one point per case
    and provider (colour: op, marker: provider, fill: mode). Returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return None
    points = [r for r in rows if r["status"] == "ok" and r["tflops"] and r["intensity"]]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    intensities = [r["intensity"] for r in points] or [1.0]
    lo = min(intensities + [0.1]) / 2
    hi = max(intensities + [1000.0]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    bw = ceilings["memory_bandwidth"]
    dtypes = sorted({r["dtype"] for r in points}) or list(ceilings["flops"])
    styles = ["-", "--", "-.", ":"]
    for i, dt in enumerate(dtypes):
        peak = ceilings["flops"].get(dt)
        if not peak:
            continue
        ax.plot(xs, [min(peak, x * bw) / 1e12 for x in xs], color="black", lw=1.4, ls=styles[i % 4],
                label=f"measured roof {dt}: {fmt_rate(peak, 'FLOP/s')}, {fmt_rate(bw, 'B/s')}")
    if datasheet:
        for dt in dtypes:
            peak = datasheet["flops"].get(dt)
            if peak:
                ax.plot(xs, [min(peak, x * datasheet["memory_bandwidth"]) / 1e12 for x in xs], color="0.6", lw=1,
                        ls=":", label=f"datasheet {dt} ({datasheet_name})")
    for r in points:
        ax.plot([r["intensity"]], [r["tflops"]], marker=MARKERS.get(r["provider"], "o"), ls="",
                color=COLORS.get(r["op"], "k"), fillstyle=FILL.get(r["mode"], "full"), ms=7, alpha=0.85)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, minimal bytes)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"dlkernels roofline: {meta['device_name']} ({meta['time_utc'][:10]}, {meta['git_commit'][:8]})")
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=op) for op, c in COLORS.items()]
    handles += [Line2D([], [], color="0.3", marker=m, ls="", label=p) for p, m in MARKERS.items()]
    handles += [Line2D([], [], color="0.3", marker="o", ls="", fillstyle=f, label=m) for m, f in FILL.items()]
    first = ax.legend(handles=handles, loc="lower right", fontsize=8, ncol=2)
    ax.add_artist(first)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
