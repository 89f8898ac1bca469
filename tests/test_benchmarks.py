"""Tests of the benchmark harness itself (benchmarks/): formulas, datasheet units, ceilings, the correctness
gate, and one end-to-end --quick run on the CPU. No timing assertions: benchmarks are not tests."""
import csv
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is not part of the installed package: import it from the checkout
    sys.path.insert(0, REPO)

from benchmarks import cases, ceilings, providers, report, run  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# Formulas against hand counts


def test_linear_formulas_hand_counts():
    # M=2, K=3, N=4, bias, relu: GEMM 2*2*4*3 = 48, bias 8, relu 8.
    assert cases.linear_flops(2, 3, 4, True, "relu", "forward") == 64
    assert cases.linear_flops(2, 3, 4, True, "relu", "backward") == 96 + 16
    assert cases.linear_flops(2, 3, 4, True, "relu", "fwd+bwd") == 64 + 112
    assert cases.linear_flops(2, 3, 4, False, "none", "forward") == 48
    # bytes (float32): x 6, W 12, b 4, out 8 elements.
    assert cases.linear_bytes(2, 3, 4, 4, True, "relu", "forward") == (6 + 12 + 4 + 8) * 4
    # backward reads grad_out 8, x 6, W 12, the saved output 8; writes grad_x 6, grad_W 12, grad_b 4.
    assert cases.linear_bytes(2, 3, 4, 4, True, "relu", "backward") == (8 + 6 + 12 + 8 + 6 + 12 + 4) * 4
    assert cases.linear_bytes(2, 3, 4, 4, False, "none", "backward") == (8 + 6 + 12 + 6 + 12) * 4
    # fwd+bwd reads x, W, b, grad_out and writes out, grad_x, grad_W, grad_b.
    assert cases.linear_bytes(2, 3, 4, 2, True, "gelu", "fwd+bwd") == (6 + 12 + 4 + 8 + 8 + 6 + 12 + 4) * 2
    with pytest.raises(ValueError):
        cases.linear_flops(2, 3, 4, mode="sideways")


def test_conv_formulas_hand_counts():
    # N=1, C=2, 4x4, K=3, 3x3, padding 1: 4x4 output, 1*3*16*2*9 = 864 multiply-adds; 48 output elements.
    assert cases.conv2d_out_hw(4, 4, 3, 3, 1, 1) == (4, 4)
    assert cases.conv2d_flops(1, 2, 4, 4, 3, 3, 3, 1, 1, activation="relu", mode="forward") == 2 * 864 + 2 * 48
    assert cases.conv2d_flops(1, 2, 4, 4, 3, 3, 3, 1, 1, bias=False, mode="backward") == 4 * 864
    assert cases.conv2d_bytes(1, 2, 4, 4, 3, 3, 3, 4, 1, 1, activation="relu", mode="forward") == (32 + 54 + 3 + 48) * 4
    assert cases.conv2d_bytes(1, 2, 4, 4, 3, 3, 3, 4, 1, 1, activation="relu", mode="backward") == \
        (48 + 32 + 54 + 48 + 32 + 54 + 3) * 4
    # stride 2: 2x2 output
    assert cases.conv2d_out_hw(4, 4, 3, 3, 2, 1) == (2, 2)
    assert cases.conv2d_flops(1, 2, 4, 4, 3, 3, 3, 2, 1, bias=False, mode="forward") == 2 * (3 * 4 * 2 * 9)
    # groups divide the reduction
    assert cases.conv2d_flops(1, 4, 4, 4, 4, 3, 3, 1, 1, groups=2, bias=False) == 2 * (4 * 16 * 2 * 9)


def test_pool_formulas_hand_counts():
    # 1x1x4x4, 2x2 windows, stride 2: 4 outputs of 3 comparisons each.
    assert cases.max_pool2d_flops(1, 1, 4, 4, 2, mode="forward") == 12
    assert cases.max_pool2d_flops(1, 1, 4, 4, 2, mode="backward") == 4
    assert cases.max_pool2d_bytes(1, 1, 4, 4, 2, 4, mode="forward") == (16 + 4) * 4
    assert cases.max_pool2d_bytes(1, 1, 4, 4, 2, 4, mode="backward") == (4 + 16) * 4 + 4 * 8  # int64 indices
    assert cases.max_pool2d_bytes(1, 1, 4, 4, 2, 2, mode="fwd+bwd") == (16 + 4 + 4 + 16) * 2
    # ResNet's stem pool: 3x3, stride 2, padding 1 halves 112 to 56
    assert cases.pool_out_hw(112, 112, 3, 2, 1) == (56, 56)
    assert cases.max_pool2d_flops(1, 64, 112, 112, 3, 2, 1) == 64 * 56 * 56 * 8


def _counted(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_gemm_and_conv_flops_match_torch_flop_counter():
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(12, 16, requires_grad=True)
    assert _counted(lambda: torch.nn.functional.linear(x, w)) == cases.linear_flops(8, 16, 12, False, "none")
    y = torch.nn.functional.linear(x, w)
    assert _counted(lambda: y.backward(torch.ones_like(y))) == cases.linear_flops(8, 16, 12, False, "none", "backward")
    img = torch.randn(2, 3, 9, 9, requires_grad=True)
    k = torch.randn(5, 3, 3, 3, requires_grad=True)
    conv = lambda: torch.nn.functional.conv2d(img, k, stride=2, padding=1)  # noqa: E731
    assert _counted(conv) == cases.conv2d_flops(2, 3, 9, 9, 5, 3, 3, 2, 1, bias=False)
    out = conv()
    assert _counted(lambda: out.backward(torch.ones_like(out))) == \
        cases.conv2d_flops(2, 3, 9, 9, 5, 3, 3, 2, 1, bias=False, mode="backward")


def test_case_objects_use_the_formulas():
    lin = cases.LinearCase("mlp", 16, 32, 8, "relu")
    assert lin.flops("forward") == cases.linear_flops(16, 32, 8, True, "relu")
    assert lin.bytes("fwd+bwd", 2) == cases.linear_bytes(16, 32, 8, 2, True, "relu", "fwd+bwd")
    conv = cases.ConvCase("resnet", 2, 8, 14, 16, stride=2)
    assert conv.flops("backward") == cases.conv2d_flops(
        2, 8, 14, 14, 16, 3, 3, 2, 1, activation="relu", mode="backward"
    )
    pool = cases.PoolCase("vgg", 2, 4, 8, channels_last=True)
    x = pool.make_inputs("cpu", torch.float32)["x"]
    assert x.is_contiguous(memory_format=torch.channels_last) and (x != 0).all()
    # TinyVGG 28x28, batch 1: convs 1->10 and 10->10 at 28x28 and twice 10->10 at 14x14, linear 490 -> 10.
    tiny = cases.ModelCase("model", "tinyvgg", 1, 1, 28, 10)
    hand = 2 * 784 * 10 * 9 * 1 + 2 * 784 * 10 * 90 + 2 * (2 * 196 * 10 * 90) + 2 * 490 * 10
    assert tiny.flops("forward") == hand


def test_every_default_case_has_positive_formulas():
    for device_type in ("cpu", "cuda"):
        for quick in (False, True):
            for case in cases.build_cases(device_type, quick):
                if case.op == "model":
                    continue  # needs torchvision for vgg11; TinyVGG is covered above
                for mode in case.modes:
                    assert case.flops(mode) > 0 and case.bytes(mode, 2) > 0, (case, mode)


# ---------------------------------------------------------------------------------------------------------
# Datasheet units and ceilings


def test_datasheet_units():
    h100 = ceilings.DATASHEET["NVIDIA H100 SXM5"]
    assert h100["memory_bandwidth"] == pytest.approx(3.35e12)  # 3.35 TB/s, decimal, in bytes/s
    assert h100["flops"]["bfloat16"] == pytest.approx(989.4e12)  # dense, FLOP/s
    assert h100["flops"]["bfloat16"] / h100["memory_bandwidth"] == pytest.approx(295, rel=0.01)  # ridge, FLOP/B
    assert ceilings.DATASHEET["NVIDIA H200 SXM"]["memory_bandwidth"] == pytest.approx(4.8e12)
    for name, entry in ceilings.DATASHEET.items():
        assert 1e12 <= entry["memory_bandwidth"] <= 1e13, name
        flops = entry["flops"]
        assert 1e13 <= flops["float32"] < flops["tf32"] < flops["bfloat16"] == flops["float16"] < 1e16, name
    zen = ceilings.zen4_peaks(2, 3.7e9)
    assert zen["flops"]["float32"] == pytest.approx(2 * 3.7e9 * 32)  # 2 cores x 32 FLOP/cycle
    assert zen["flops"]["float64"] == pytest.approx(zen["flops"]["float32"] / 2)
    assert zen["memory_bandwidth"] == pytest.approx(460.8e9)  # 12 x DDR5-4800 x 8 bytes
    assert ceilings.datasheet_for("NVIDIA H100 80GB HBM3", "cuda")[0] == "NVIDIA H100 SXM5"
    assert ceilings.datasheet_for("NVIDIA H100 PCIe", "cuda")[0] == "NVIDIA H100 PCIe"
    assert ceilings.datasheet_for("NVIDIA H200", "cuda")[0] == "NVIDIA H200 SXM"
    assert ceilings.datasheet_for("Some GPU", "cuda") is None
    assert report.fmt_rate(3.35e12, "B/s") == "3.35 TB/s" and report.fmt_rate(989.4e12, "FLOP/s") == "989 TFLOP/s"
    h100_line = next(line for line in ceilings.datasheet_table(2).splitlines() if line.startswith("NVIDIA H100 SXM5"))
    assert h100_line.split()[3:6] == ["3.35", "67", "67"] and "989.4" in h100_line  # TB/s, then TFLOP/s


def test_ceilings_measurement_small():
    bandwidth = ceilings.measure_bandwidth("cpu", 4 << 20, budget=0.02)
    assert 1e8 < bandwidth < 1e13  # bytes/s: between 0.1 GB/s and 10 TB/s
    flops = ceilings.measure_matmul("cpu", torch.float32, 128, budget=0.02)
    assert 1e7 < flops < 1e13
    overhead = ceilings.measure_overhead("cpu", budget=0.02)
    assert 1e-8 < overhead < 1e-2
    assert ceilings.cache_bytes("cpu") > 0


def test_roofline_regimes():
    # 1 GFLOP/s and 1 GB/s: ridge at 1 FLOP/byte; one trivial op costs 1 us.
    mem = report.roofline(flops=1e6, nbytes=1e7, bandwidth=1e9, peak=1e9, overhead_s=1e-6, n_ops=1)
    assert mem["bound"] == "memory" and mem["regime"] == "memory" and mem["bound_flops"] == pytest.approx(1e8)
    comp = report.roofline(flops=1e8, nbytes=1e6, bandwidth=1e9, peak=1e9, overhead_s=1e-6, n_ops=1)
    assert comp["bound"] == "compute" and comp["regime"] == "compute" and comp["bound_flops"] == pytest.approx(1e9)
    tiny = report.roofline(flops=10, nbytes=10, bandwidth=1e9, peak=1e9, overhead_s=1e-6, n_ops=3)
    assert tiny["regime"] == "overhead" and tiny["t_overhead_s"] == pytest.approx(3e-6)


def test_best_of_two_ceilings_sets_the_roofline():
    first = {"memory_bandwidth": 1e9, "flops": {"float32": 1e10}, "overhead_s": 2e-6}
    second = {"memory_bandwidth": 2e9, "flops": {"float32": 5e9}, "overhead_s": 1e-6}
    best = run.combine_ceilings(first, second)
    assert best["memory_bandwidth"] == 2e9 and best["flops"]["float32"] == 1e10 and best["overhead_s"] == 1e-6
    row = {"flops": 1e6, "bytes": 1e7, "dtype": "float32", "status": "ok", "median_s": 1e-2, "n_ops": 1}
    run.apply_roofline([row], best)
    assert row["bound"] == "memory" and row["bound_flops"] == pytest.approx(2e8)  # 0.1 FLOP/B x 2 GB/s
    assert row["fraction"] == pytest.approx(1e8 / 2e8)


# ---------------------------------------------------------------------------------------------------------
# The correctness gate


def test_max_error():
    a = torch.tensor([1.0, -2.0, 4.0])
    assert run.max_error((a,), (a.double(),)) == 0
    assert run.max_error((a + 0.04,), (a.double(),)) == pytest.approx(0.01)
    assert run.max_error((a[:2],), (a.double(),)) == math.inf
    assert run.max_error((a * float("nan"),), (a.double(),)) == math.inf
    assert run.max_error({"w": a, "extra": a}, {"w": a.double()}) == 0


def test_wrong_provider_is_reported_and_not_timed(monkeypatch):
    case = cases.LinearCase("mlp", 4, 8, 6, "relu")
    monkeypatch.setattr(providers, "unavailable", lambda *args: None)
    monkeypatch.setattr(case, "dlkernels_fn", lambda backend: (lambda t: case.torch_fn()(t) * 1.01))
    ceil = {"memory_bandwidth": 1e10, "flops": {"float32": 1e11}, "overhead_s": 1e-6}
    rows = run.run_case(case, torch.float32, ["forward", "fwd+bwd"], ["torch_eager", "dlk_native"], torch.device("cpu"),
                        ceil, budget=0.01)
    by = {(r["mode"], r["provider"]): r for r in rows}
    for mode in ("forward", "fwd+bwd"):
        assert by[(mode, "torch_eager")]["status"] == "ok" and by[(mode, "torch_eager")]["median_s"] > 0
        wrong = by[(mode, "dlk_native")]
        assert wrong["status"] == "wrong" and wrong["median_s"] is None and wrong["max_err"] > 1e-3


def test_case_selection():
    all_cases = cases.build_cases("cpu", quick=False)
    vgg = run.select_cases(all_cases, ["conv2d"], list(cases.MODES), ["vgg/"])
    assert vgg and all(c.op == "conv2d" and c.group == "vgg" for c in vgg)
    nhwc = run.select_cases(all_cases, None, ["backward"], ["nhwc"])
    assert nhwc and all(c.op == "max_pool2d" and c.params["channels_last"] for c in nhwc)
    assert not run.select_cases(all_cases, ["model"], ["backward"], None)  # models time forward and fwd+bwd only
    assert providers.resolve(["native", "eager", "compile"]) == ["torch_eager", "torch_compile", "dlk_native"]


# ---------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_quick_run_writes_table_csv_json_png(tmp_path):
    """`python -m benchmarks --quick` restricted by filters to a few small cases (~20 s on 2 cores)."""
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--op", "linear_act,max_pool2d,model",
           "--shapes", "M=1 ,NHWC,tinyvgg", "--budget", "0.02", "--out", str(tmp_path), "--name", "t", "--settle", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: some provider was wrong (a finding)
    assert "TFLOP/s" in proc.stdout and "regime" in proc.stdout and "vs eager" in proc.stdout

    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    for field in ("device_name", "torch", "triton", "python", "git_commit", "time_utc", "op", "case", "mode", "dtype",
                  "provider", "status", "median_s", "p20_s", "p80_s", "tflops", "gbps", "intensity", "bound",
                  "bound_flops", "fraction", "regime", "speedup", "max_err"):
        assert field in rows[0], field
    assert {r["op"] for r in rows} == {"linear_act", "max_pool2d", "model"}
    assert {r["mode"] for r in rows} == set(cases.MODES)
    eager = [r for r in rows if r["provider"] == "torch_eager"]
    assert eager and all(r["status"] == "ok" for r in eager), [(r["case"], r["reason"]) for r in eager]
    for r in eager:
        assert float(r["median_s"]) > 0 and float(r["p20_s"]) <= float(r["p80_s"])
        assert float(r["tflops"]) > 0 and float(r["gbps"]) > 0 and float(r["fraction"]) > 0
        assert float(r["speedup"]) == pytest.approx(1.0)
        assert r["regime"] in ("memory", "compute", "overhead") and r["bound"] in ("memory", "compute")
    triton_rows = [r for r in rows if r["provider"] == "dlk_triton"]
    assert triton_rows and all(r["status"] == "skipped" and r["reason"] for r in triton_rows)

    with open(tmp_path / "t.json") as f:
        doc = json.load(f)
    assert doc["meta"]["device"] == "cpu" and doc["meta"]["git_commit"]
    # The folder name tells CPUs apart that report the same model name (an AVX-512 EPYC from an AVX2 one).
    assert doc["meta"]["cpu_vector_isa"] in ("avx512", "avx2", "base")
    assert f"-{doc['meta']['cpu_vector_isa']}-" in doc["meta"]["device_slug"]
    assert doc["ceilings"]["memory_bandwidth"] > 0 and doc["ceilings"]["flops"]["float32"] > 0
    assert len(doc["rows"]) == len(rows) and doc["rows"][0]["device_name"] == doc["meta"]["device_name"]

    pytest.importorskip("matplotlib")
    with open(tmp_path / "t.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cpu_vector_isa_reads_the_flags(monkeypatch, tmp_path):
    for flags, expected in (("fpu avx2 fma avx512f avx512vl avx512bw avx512dq", "avx512"),
                            ("fpu avx2 fma avx512f", "avx2"), ("fpu sse2 avx", "base")):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
        real_open = open
        monkeypatch.setattr("builtins.open", lambda name, *a, **k: real_open(path if name == "/proc/cpuinfo" else name,
                                                                              *a, **k))
        assert ceilings.cpu_vector_isa() == expected
        monkeypatch.undo()


def test_block_suite_with_one_thread_reports_the_memory_kept_for_backward(tmp_path):
    """`--suite block --threads 1 --rounds 3`: the fused block against eager conv -> relu -> pool, its rows with
    the memory each keeps for the backward (saved_bytes), the run on one thread (meta "threads"), the providers
    timed in turn."""
    cmd = [sys.executable, "-m", "benchmarks", "--suite", "block", "--quick", "--threads", "1", "--rounds", "3",
           "--device", "cpu",
           "--op", "conv2d_maxpool", "--shapes", "tinyvgg28", "--provider", "eager,native", "--budget", "0.02",
           "--out", str(tmp_path), "--name", "b", "--settle", "0", "--no-plot"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kept for bwd" in proc.stdout
    with open(tmp_path / "b.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["op"] for r in rows} == {"conv2d_maxpool"} and {r["threads"] for r in rows} == {"1"}
    assert all(r["status"] == "ok" for r in rows), [(r["provider"], r["mode"], r["reason"]) for r in rows]
    assert {r["timer"] for r in rows} == {"3 rounds in turn"}  # --rounds: the providers timed in turn
    kept = {(r["provider"], r["mode"]): int(r["saved_bytes"]) for r in rows if r["mode"] != "forward"}
    # eager keeps the relu output (32x10x28x28 float) and int64 indices; the block its pooled output and int8 index
    assert kept[("torch_eager", "backward")] == 32 * 10 * 28 * 28 * 4 + 32 * 10 * 14 * 14 * 8
    assert kept[("dlk_native", "backward")] == 32 * 10 * 14 * 14 * (4 + 1)


def test_block_formulas():
    case = cases.BlockCase("t", 2, 3, 8, 4)
    conv = cases.conv2d_flops(2, 3, 8, 8, 4, 3, 3, 1, 1, activation="relu")
    assert case.flops("forward") == conv + cases.max_pool2d_flops(2, 4, 8, 8, 2)
    x, w, b, out = 2 * 3 * 8 * 8, 4 * 3 * 9, 4, 2 * 4 * 4 * 4
    assert case.bytes("forward", 4) == (x + w + b + out) * 4
    assert case.bytes("backward", 4) == (out + x + w + out + x + w + b) * 4 + out  # + the int8 window index


def test_default_results_folder_is_untracked():
    """Without --out a run writes under benchmark-results/ (ignored by git), never over the committed
    reference results in benchmarks/results/."""
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmark-results/cpu-x/roofline.csv"], cwd=REPO)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, "benchmark-results/ must be ignored by git"
    args = run.parse_args([])
    assert args.out is None and args.settle == 60.0


def test_busy_machine_waits_then_says_so(monkeypatch, capsys):
    readings = iter([1.8, 1.7, 0.2])
    monkeypatch.setattr(run, "busy_cores", lambda seconds=1.0: next(readings))
    assert run.wait_until_idle(30) == 0.2
    out = capsys.readouterr().out
    assert "the machine is busy" in out and "idle now" in out
    monkeypatch.setattr(run, "busy_cores", lambda seconds=1.0: 1.9)
    assert run.wait_until_idle(0) == 1.9
    assert "still busy" in capsys.readouterr().out
    monkeypatch.setattr(run, "busy_cores", lambda seconds=1.0: 0.1)
    assert run.wait_until_idle(30) == 0.1 and capsys.readouterr().out == ""


def test_busy_cores_reads_this_machine():
    busy = run.busy_cores(0.2)
    if busy is None:
        pytest.skip("no /proc/stat")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_the_no_gpu_cuda_home_notice_is_dropped_and_nothing_else():
    notice = run._NoGpuCudaHomeNotice()
    make = lambda msg: logging.LogRecord("torch.utils.cpp_extension", logging.WARNING, "", 0, msg, (), None)  # noqa: E731
    assert not notice.filter(make("No CUDA runtime is found, using CUDA_HOME='/usr/local'"))
    assert notice.filter(make("Error checking compiler version for c++"))


@pytest.mark.slow
def test_overhead_suite_runs_and_writes_its_rows(tmp_path):
    """`python -m benchmarks --suite overhead --quick`: every op x kind of call and TinyVGG at batch 1, each a
    positive time on both sides and a ratio inside its range (no goal is asserted: timings are not tests)."""
    cmd = [sys.executable, "-m", "benchmarks", "--suite", "overhead", "--quick", "--device", "cpu", "--out",
           str(tmp_path), "--name", "o", "--settle", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "o.csv") as f:
        rows = list(csv.DictReader(f))
    kinds = {(r["op"], r["kind"]) for r in rows}
    for op in ("linear_act", "conv2d", "max_pool2d"):
        for kind in ("functional", "raw op", "layer", "functional+autograd", "raw op+autograd", "layer+autograd"):
            assert (op, kind) in kinds, (op, kind, sorted(kinds))
    assert {("model", "model inference"), ("model", "model training step")} <= kinds, sorted(kinds)
    for r in rows:
        assert float(r["dlkernels_us"]) > 0 and float(r["torch_us"]) > 0
        assert float(r["ratio_min"]) <= float(r["ratio"]) <= float(r["ratio_max"])


# ---------------------------------------------------------------------------------------------------------
# The model and layer suites


def _run_suite(tmp_path, *extra):
    cmd = [sys.executable, "-m", "benchmarks", *extra, "--quick", "--threads", "1", "--device", "cpu",
           "--out", str(tmp_path), "--settle", "0", "--no-plot"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_models_suite_quick_writes_its_rows(tmp_path):
    """`python -m benchmarks --suite models --quick`: TinyVGG, resnet18 and mobilenet_v3_small with frozen
    features, inference and a training step, torch eager against convert(backend="auto") and ("native"), the
    ratios with their ranges, the conversion report per model and the geomean rows."""
    from benchmarks import model_suite

    out = _run_suite(tmp_path, "--suite", "models", "--name", "m", "--rounds", "2", "--budget", "0.01")
    assert "| geomean |" in out and "vs eager" in out
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    for field in ("device_name", "torch", "git_commit", "threads", "model", "input", "mode", "provider", "status",
                  "median_s", "min_s", "max_s", "rounds", "compile_s", "max_err", "vs_eager", "vs_eager_min",
                  "vs_eager_max", "vs_compile", "converted", "converted_layers", "fused", "pooled", "left"):
        assert field in rows[0], field
    assert {r["threads"] for r in rows} == {"1"}
    models = [r for r in rows if r["model"] != "geomean"]
    assert {r["model"] for r in models} == {s.name for s in model_suite.QUICK_MODELS}
    assert {r["mode"] for r in rows} == {"inference", "training step"}
    assert {r["provider"] for r in rows} == {"torch_eager", "dlk_auto", "dlk_native"}  # compile: --compile only
    assert all(r["status"] == "ok" for r in rows), [(r["model"], r["provider"], r["reason"]) for r in rows]
    for r in models:
        assert float(r["min_s"]) <= float(r["median_s"]) <= float(r["max_s"]) and r["rounds"] == "2"
        assert float(r["vs_eager_min"]) <= float(r["vs_eager"]) <= float(r["vs_eager_max"])
        if r["provider"] == "torch_eager":
            assert float(r["vs_eager"]) == pytest.approx(1.0) and r["converted"] == ""
        else:
            assert float(r["max_err"]) <= model_suite.TOLERANCE and int(r["converted"]) > 0
            assert r["converted_layers"].count(":") == int(r["converted"])
    tiny = next(r for r in models if r["model"] == "tinyvgg" and r["provider"] == "dlk_native")
    assert int(tiny["converted"]) == 5 and "classifier.1:Linear" in tiny["converted_layers"]
    geo = [r for r in rows if r["model"] == "geomean"]
    assert {(r["mode"], r["provider"]) for r in geo} == {(m, p) for m in model_suite.MODES
                                                         for p in ("torch_eager", "dlk_auto", "dlk_native")}
    with open(tmp_path / "m.json") as f:
        doc = json.load(f)
    assert doc["meta"]["compile"] is False and len(doc["rows"]) == len(rows)


def test_frozen_features_train_the_classifier_only():
    from benchmarks import model_suite

    spec = model_suite.QUICK_MODELS[-1]
    assert spec.frozen
    model, _ = model_suite._build_provider("dlk_native", spec, "training step", spec.build())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("classifier.") for n in trained)


def test_layers_suite_collects_shapes_with_hooks():
    from benchmarks import layer_suite, model_suite

    tiny = [s for s in model_suite.MODELS if s.name == "tinyvgg"]
    shapes = layer_suite.collect_shapes(tiny, (1, 8))
    by_op = {}
    for s in shapes:
        by_op.setdefault(s["op"], []).append(s)
    # TinyVGG at batch 1 and 8: convs 1->10 at 28, 10->10 at 28 and at 14 (twice: one shape); pools at 28 and 14;
    # the linear 490 -> 10. Each per batch.
    assert len(by_op["conv2d"]) == 6 and len(by_op["max_pool2d"]) == 4 and len(by_op["linear"]) == 2
    conv14 = next(s for s in by_op["conv2d"] if s["x"] == (1, 10, 14, 14))
    assert conv14["count"] == 2 and conv14["w"] == (10, 10, 3, 3) and conv14["padding"] == (1, 1)
    assert conv14["models"] == ["tinyvgg"] and conv14["bias"] and conv14["groups"] == 1
    assert {s["x"] for s in by_op["linear"]} == {(1, 490), (8, 490)}
    pool = next(s for s in by_op["max_pool2d"] if s["x"] == (8, 10, 28, 28))
    assert pool["kernel"] == (2, 2) and pool["stride"] == (2, 2) and not pool["ceil_mode"]


def test_layers_suite_records_the_layout():
    """convnext's depthwise and downsampling convs get channels-last inputs (out of its permutes): their rows
    say NHWC and time that layout; its stem reads the NCHW image."""
    from benchmarks import layer_suite, model_suite

    spec = [s for s in model_suite.MODELS if s.name == "convnext_tiny"]
    shapes = [s for s in layer_suite.collect_shapes(spec, (1,)) if s["op"] == "conv2d"]
    stem = next(s for s in shapes if s["w"][1] == 3)
    depthwise = [s for s in shapes if s["groups"] > 1]
    assert stem["layout"] == "NCHW" and "NHWC" not in layer_suite.describe(stem)
    assert depthwise and all(s["layout"] == "NHWC" for s in depthwise)
    x = layer_suite.make_inputs(depthwise[0], grad=False)["x"]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert layer_suite.describe(depthwise[0]).endswith("NHWC")


def test_layers_suite_quick_writes_its_rows_and_summary(tmp_path):
    """`python -m benchmarks --suite layers --quick`: a few shapes of each op, native and auto against torch,
    forward and fwd+bwd, per-row ratios and the summary (fraction >= 1.0x, minimum ratio)."""
    from benchmarks import layer_suite

    out = _run_suite(tmp_path, "--suite", "layers", "--name", "l", "--rounds", "2")
    assert ">= 1.0x" in out
    with open(tmp_path / "l.csv") as f:
        rows = list(csv.DictReader(f))
    for field in ("device_name", "op", "kind", "case", "batch", "mode", "provider", "status", "median_s", "speedup",
                  "speedup_min", "speedup_max", "max_err", "x_shape", "w_shape", "stride", "padding", "dilation",
                  "groups", "bias", "kernel", "ceil_mode", "layout", "models", "count"):
        assert field in rows[0], field
    assert {r["op"] for r in rows} == {"conv2d", "linear", "max_pool2d"}
    assert {r["mode"] for r in rows} == {"forward", "fwd+bwd"}
    assert {r["provider"] for r in rows} == {"torch_eager", "dlk_native", "dlk_auto"}
    assert all(r["status"] == "ok" for r in rows), [(r["case"], r["provider"], r["reason"]) for r in rows]
    for r in rows:
        assert float(r["median_s"]) > 0
        assert float(r["speedup_min"]) <= float(r["speedup"]) <= float(r["speedup_max"])
    assert {r["kind"] for r in rows} <= set(layer_suite.KINDS) and "linear" in {r["kind"] for r in rows}
    with open(tmp_path / "l.json") as f:
        doc = json.load(f)
    summary = doc["summary"]
    by_kind = {(e["provider"], e["mode"], e["kind"]): e["rows"] for e in doc["summary_by_kind"]}
    assert by_kind[("dlk_native", "forward", "max_pool2d")] == sum(
        r["kind"] == "max_pool2d" and r["provider"] == "dlk_native" and r["mode"] == "forward" for r in rows)
    assert {(e["provider"], e["mode"]) for e in summary} == {(p, m) for p in ("dlk_native", "dlk_auto")
                                                             for m in ("forward", "fwd+bwd")}
    for e in summary:
        assert 0.0 <= e["at_least_1x"] <= 1.0 and e["min_ratio"] > 0 and e["rows"] == len(rows) // 6


def test_models_geomean_and_table_with_compile_columns():
    from benchmarks import model_suite

    def row(model, provider, t, eager_t, compile_t=None, compile_s=None):
        r = {"model": model, "input": "1x3", "mode": "inference", "provider": provider, "status": "ok",
             "median_s": t, "compile_s": compile_s, "converted": 3 if provider.startswith("dlk") else None,
             "vs_eager": eager_t / t, "vs_eager_min": eager_t / t, "vs_eager_max": eager_t / t}
        if compile_t:
            r.update(vs_compile=compile_t / t, vs_compile_min=compile_t / t, vs_compile_max=compile_t / t)
        return r

    rows = [row("a", "torch_eager", 1.0, 1.0, 2.0), row("a", "torch_compile", 2.0, 1.0, 2.0, compile_s=12.0),
            row("a", "dlk_native", 0.5, 1.0, 2.0), row("b", "torch_eager", 1.0, 1.0, 1.0),
            row("b", "torch_compile", 1.0, 1.0, 1.0, compile_s=3.0), row("b", "dlk_native", 2.0, 1.0, 1.0)]
    geo = {r["provider"]: r for r in model_suite.geomean_rows(rows)}
    assert geo["dlk_native"]["vs_eager"] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert geo["dlk_native"]["vs_compile"] == pytest.approx(math.sqrt(4 * 0.5))
    assert geo["dlk_native"]["reason"].startswith("worst: b")
    text = model_suite.table(model_suite.normalise(rows + list(geo.values())))
    assert "dlk_native vs compile" in text and "| compile (s) |" in text
    line_a = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert "| 12 |" in line_a and "2.00 (2.00-2.00)" in line_a
