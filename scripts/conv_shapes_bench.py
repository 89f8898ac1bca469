"""Native CPU conv2d against eager PyTorch on layer shapes of real models (forward, forward + backward).

Usage: PYTHONPATH=. python3 scripts/conv_shapes_bench.py [--batch 1 8] [--filter WORD] [--channels-last]
       [--dtype float32] [--threads 1]
Prints one row per (layer, batch): time of eager and native and their ratio (eager / native: > 1 is faster).
Times are the fastest of repeated runs (on a shared machine the median mostly measures other processes),
alternating the two sides so that load from other processes hits both.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import dlkernels

# name, (C, H, W), (K, kh, kw), stride, padding, groups, activation
LAYERS = [
    ("resnet.stem7x7s2", (3, 224, 224), (64, 7, 7), 2, 3, 1, "relu"),
    ("resnet.3x3.64@56", (64, 56, 56), (64, 3, 3), 1, 1, 1, "relu"),
    ("resnet.3x3s2.64>128", (64, 56, 56), (128, 3, 3), 2, 1, 1, "relu"),
    ("resnet.1x1s2.64>128", (64, 56, 56), (128, 1, 1), 2, 0, 1, "none"),
    ("resnet.3x3.256@14", (256, 14, 14), (256, 3, 3), 1, 1, 1, "relu"),
    ("resnet.3x3.512@7", (512, 7, 7), (512, 3, 3), 1, 1, 1, "relu"),
    ("resnet50.1x1.256>64@56", (256, 56, 56), (64, 1, 1), 1, 0, 1, "relu"),
    ("resnet50.1x1.64>256@56", (64, 56, 56), (256, 1, 1), 1, 0, 1, "none"),
    ("resnet50.1x1s2.512>1024", (512, 28, 28), (1024, 1, 1), 2, 0, 1, "none"),
    ("resnet50.1x1.1024>256@14", (1024, 14, 14), (256, 1, 1), 1, 0, 1, "relu"),
    ("resnet50.1x1.2048>512@7", (2048, 7, 7), (512, 1, 1), 1, 0, 1, "relu"),
    ("mbv2.stem3x3s2", (3, 224, 224), (32, 3, 3), 2, 1, 1, "relu6"),
    ("mbv2.dw3x3.32@112", (32, 112, 112), (32, 3, 3), 1, 1, 32, "relu6"),
    ("mbv2.1x1.32>16@112", (32, 112, 112), (16, 1, 1), 1, 0, 1, "none"),
    ("mbv2.dw3x3s2.96@112", (96, 112, 112), (96, 3, 3), 2, 1, 96, "relu6"),
    ("mbv2.dw3x3.144@56", (144, 56, 56), (144, 3, 3), 1, 1, 144, "relu6"),
    ("mbv2.1x1.144>24@56", (144, 56, 56), (24, 1, 1), 1, 0, 1, "none"),
    ("mbv2.dw3x3.384@14", (384, 14, 14), (384, 3, 3), 1, 1, 384, "relu6"),
    ("mbv2.dw3x3.960@7", (960, 7, 7), (960, 3, 3), 1, 1, 960, "relu6"),
    ("mbv2.1x1.960>160@7", (960, 7, 7), (160, 1, 1), 1, 0, 1, "none"),
    ("mbv3s.dw3x3s2.16@112", (16, 112, 112), (16, 3, 3), 2, 1, 16, "relu"),
    ("mbv3s.dw5x5.96@14", (96, 14, 14), (96, 5, 5), 1, 2, 96, "hardswish"),
    ("effb0.dw5x5s2.144@56", (144, 56, 56), (144, 5, 5), 2, 2, 144, "silu"),
    ("effb0.dw5x5.240@28", (240, 28, 28), (240, 5, 5), 1, 2, 240, "silu"),
    ("effb0.1x1.240>40@28", (240, 28, 28), (40, 1, 1), 1, 0, 1, "none"),
    ("convnext.stem4x4s4", (3, 224, 224), (96, 4, 4), 4, 0, 1, "none"),
    ("convnext.dw7x7.96@56", (96, 56, 56), (96, 7, 7), 1, 3, 96, "none"),
    ("convnext.dw7x7.768@7", (768, 7, 7), (768, 7, 7), 1, 3, 768, "none"),
    ("convnext.down2x2s2.96>192", (96, 56, 56), (192, 2, 2), 2, 0, 1, "none"),
    ("regnet.g3x3.48@56/g6", (48, 56, 56), (48, 3, 3), 1, 1, 6, "relu"),
    ("regnet.g3x3s2.104@56/g13", (104, 56, 56), (104, 3, 3), 2, 1, 13, "relu"),
    ("vgg11.3x3.3>64@224", (3, 224, 224), (64, 3, 3), 1, 1, 1, "relu"),
    ("vgg11.3x3.512@14", (512, 14, 14), (512, 3, 3), 1, 1, 1, "relu"),
    ("tinyvgg.3x3.1>10@28", (1, 28, 28), (10, 3, 3), 1, 1, 1, "relu"),
    ("tinyvgg.3x3.10>10@28", (10, 28, 28), (10, 3, 3), 1, 1, 1, "relu"),
]

EAGER_ACT = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish}


def timeit(fn, budget):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(layer, batch, backward, dtype, channels_last, budget, rounds):
    name, (c, h, w), (k, kh, kw), stride, padding, groups, act = layer
    torch.manual_seed(0)
    x = torch.randn(batch, c, h, w, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(k, c // groups, kh, kw, dtype=dtype) / (c // groups * kh * kw) ** 0.5
    bias = torch.randn(k, dtype=dtype)
    # The first layer of a model needs no grad_input.
    x.requires_grad_(backward and c > 3)
    weight.requires_grad_(backward)
    bias.requires_grad_(backward)

    def eager():
        out = EAGER_ACT[act](F.conv2d(x, weight, bias, stride, padding, 1, groups))
        if backward:
            out.backward(torch.ones_like(out))

    def native():
        out = dlkernels.ops.conv2d(x, weight, bias, stride, padding, 1, groups, act, backend="native")
        if backward:
            out.backward(torch.ones_like(out))

    te, tn = [], []
    for _ in range(rounds):  # alternate the sides
        te += timeit(eager, budget)
        tn += timeit(native, budget)
    return min(te), min(tn)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--filter", default="")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--budget", type=float, default=0.15, help="seconds per side per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"dlkernels from {dlkernels.__file__}")
    print(f"threads {torch.get_num_threads()}, {args.dtype}, {'channels_last' if args.channels_last else 'NCHW'}")
    print(f"{'layer':28s} {'N':>2s} {'fwd eager ms':>12s} {'native':>8s} {'ratio':>6s}   "
          f"{'f+b eager ms':>12s} {'native':>8s} {'ratio':>6s}")
    ratios = []
    for layer in LAYERS:
        if args.filter not in layer[0]:
            continue
        for batch in args.batch:
            fe, fn = measure(layer, batch, False, dtype, args.channels_last, args.budget, args.rounds)
            row = f"{layer[0]:28s} {batch:2d} {fe * 1e3:12.3f} {fn * 1e3:8.3f} {fe / fn:6.2f}"
            ratios.append(fe / fn)
            if not args.no_backward:
                be, bn = measure(layer, batch, True, dtype, args.channels_last, args.budget, args.rounds)
                row += f"   {be * 1e3:12.3f} {bn * 1e3:8.3f} {be / bn:6.2f}"
                ratios.append(be / bn)
            print(row, flush=True)
    if ratios:
        print(f"ratios >= 1.0: {sum(r >= 1.0 for r in ratios)}/{len(ratios)}, >= 0.7: "
              f"{sum(r >= 0.7 for r in ratios)}/{len(ratios)}, min {min(ratios):.2f}")


if __name__ == "__main__":
    main()
