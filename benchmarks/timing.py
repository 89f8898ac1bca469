"""Timing: the median (and p20/p80) time of one call of a function.

- CUDA: triton.testing.do_bench (it flushes the L2 cache between calls and times each call with CUDA events);
  CUDA events directly for calls so slow that a few are enough, or when Triton is missing.
- CPU: torch.utils.benchmark.Timer.blocked_autorange with all of torch's threads; a function so slow that
  a few calls exceed the budget is timed call by call with perf_counter instead.

Every function is warmed up first (compilation, caches, allocator). Callers rotate their inputs between calls
(see run.py) so that consecutive calls do not find their data in the caches.
"""
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median: float  # seconds
    p20: float
    p80: float
    n: int  # how many calls the statistics cover
    method: str


def _quantile(values, q):
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_events(fn, device, budget):
    """Median of per-call CUDA event times: for slow calls (a few are enough) or when Triton is missing."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    estimate = max(time.perf_counter() - start, 1e-6)
    n = int(min(max(budget / estimate, 3), 1000))
    for _ in range(min(n, 10) if estimate * 8 < budget else 0):  # more warm-up for fast calls
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for begin, end in events:
        begin.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    times = [begin.elapsed_time(end) * 1e-3 for begin, end in events]
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), n, "cuda-events")


def measure(fn, device, budget=0.2, warmup=2):
    """Times fn() on device; budget is roughly the seconds spent measuring (warm-up not included)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()  # warm-up, and how long one call takes
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is None or elapsed * 8 > budget:
            # Slow calls (do_bench would spend 5 estimate calls first) or no Triton: a few timed with events.
            return _cuda_events(fn, device, budget)
        ms = budget * 1e3
        median, p20, p80 = do_bench(fn, warmup=max(ms / 4, 5), rep=ms, quantiles=[0.5, 0.2, 0.8])
        return Timing(median * 1e-3, p20 * 1e-3, p80 * 1e-3, 0, "triton.do_bench")

    # CPU. Warm up, and learn how long one call takes.
    elapsed = 0.0
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
    if elapsed * 8 > budget:
        # Slow calls: a handful, timed one by one.
        n = max(3, min(10, int(budget / max(elapsed, 1e-9))))
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), n, "perf_counter")
    import torch.utils.benchmark as benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=budget)
    times = list(m.times)  # per-call times, one per block of m.number_per_run calls
    return Timing(m.median, _quantile(times, 0.2), _quantile(times, 0.8), len(times) * m.number_per_run,
                  "torch.utils.benchmark")


def per_call(fn, calls):
    """Seconds per call of fn over `calls` calls in a row (CPU: the suites of whole models and layers)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def in_turn(fns, rounds, budget):
    """({name: [seconds per call, one per round]}, calls per round): the functions of `fns` (name -> function,
    each warmed up) timed in turn, `rounds` times, the first of a round rotating, so that a load that comes and
    goes falls on all of them; each measurement a loop of calls as long as the slowest function's call fits
    in `budget` seconds (at least one)."""
    calls = max(1, int(budget / max(per_call(fn, 1) for fn in fns.values())))
    times = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            times[name].append(per_call(fns[name], calls))
    return times, calls


def ratio_stats(base, times):
    """(median, min, max) of the per-round ratios base / times (a speedup over `base`, round by round)."""
    ratios = [b / t for b, t in zip(base, times)]
    return statistics.median(ratios), min(ratios), max(ratios)
