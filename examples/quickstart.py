"""A first look at dlkernels: run each op, check it against PyTorch, and time it next to PyTorch.

    python examples/quickstart.py [--device cuda]
"""
import argparse

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import dlkernels


def timed(fn):
    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = parser.parse_args().device
    torch.manual_seed(0)
    x = torch.randn(64, 512, device=device)
    w, b = torch.randn(256, 512, device=device) / 20, torch.randn(256, device=device)
    img = torch.randn(8, 16, 28, 28, device=device)
    cw, cb = torch.randn(32, 16, 3, 3, device=device) / 10, torch.randn(32, device=device)

    cases = {
        "linear_act relu": (lambda: dlkernels.ops.linear_act(x, w, b, "relu"), lambda: F.relu(F.linear(x, w, b))),
        "conv2d relu": (lambda: dlkernels.ops.conv2d(img, cw, cb, padding=1, activation="relu"),
                        lambda: F.relu(F.conv2d(img, cw, cb, padding=1))),
        "max_pool2d 2x2": (lambda: dlkernels.ops.max_pool2d(img, 2), lambda: F.max_pool2d(img, 2)),
    }
    print(f"device {device}; backends: {dlkernels.available_backends()[device.split(':')[0]]}")
    print(f"{'op':16s} {'max |diff|':>10s} {'dlkernels ms':>13s} {'torch ms':>9s}")
    for name, (ours, theirs) in cases.items():
        diff = (ours() - theirs()).abs().max().item()
        print(f"{name:16s} {diff:10.2e} {timed(ours):13.3f} {timed(theirs):9.3f}")


if __name__ == "__main__":
    main()
