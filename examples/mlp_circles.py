"""The seed's first network: a small MLP that separates scikit-learn's two circles, trained twice.

Once with torch.nn, once converted to dlkernels (the same initial weights and the same data), then both
accuracies, losses and step times side by side. The accuracies must agree: the script exits with status 1
when they differ by more than --tolerance percentage points.

    python examples/mlp_circles.py [--epochs 500] [--device cuda]
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:
    import dlkernels
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dlkernels
import dlkernels.nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples' shared printing
from _compare import accuracy_difference, report_agreement  # noqa: E402


def make_data(n_samples, seed):
    from sklearn.datasets import make_circles
    from sklearn.model_selection import train_test_split

    X, y = make_circles(n_samples, noise=0.03, random_state=seed)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    return train_test_split(X, y, test_size=0.2, random_state=seed)


class CircleModel(nn.Module):
    """Linear(2, 10) -> ReLU -> Linear(10, 10) -> ReLU -> Linear(10, 1): a logit per point."""

    def __init__(self, hidden=10):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 1))

    def forward(self, x):
        return self.layers(x).squeeze(-1)


def accuracy(logits, y):
    return (torch.round(torch.sigmoid(logits)) == y).float().mean().item() * 100


def train(model, data, epochs, lr, device):
    """Full-batch Adam; returns the final metrics and the mean step time."""
    X_train, X_test, y_train, y_test = (t.to(device) for t in data)
    loss_fn = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step_times = []
    total = time.perf_counter()
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        loss = loss_fn(model(X_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - start)
    total = time.perf_counter() - total
    model.eval()
    with torch.inference_mode():
        train_logits, test_logits = model(X_train), model(X_test)
    return {
        "train loss": loss_fn(train_logits, y_train).item(),
        "test loss": loss_fn(test_logits, y_test).item(),
        "train acc %": accuracy(train_logits, y_train),
        "test acc %": accuracy(test_logits, y_test),
        # The first steps warm up (allocations, the first kernel calls): report the median.
        "step ms": sorted(step_times)[len(step_times) // 2] * 1e3,
        "train s": total,
    }


def run(epochs=500, lr=0.01, n_samples=1000, device="cpu", backend="auto", seed=42, tolerance=1.0):
    """Trains both models; returns {"torch.nn": metrics, "dlkernels": metrics}."""
    device = torch.device(device)
    data = make_data(n_samples, seed)
    torch.manual_seed(seed)
    model = CircleModel().to(device)
    converted, report = dlkernels.nn.convert(model, backend=backend, return_report=True)  # a copy: same weights
    print(report.summary())
    results = {
        "torch.nn": train(model, data, epochs, lr, device),
        "dlkernels": train(converted, data, epochs, lr, device),
    }
    report_agreement(results, tolerance)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=dlkernels.BACKENDS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (1 suits these tiny layers; 0 keeps torch's default)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="largest accepted accuracy difference, points")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args.epochs, args.lr, args.samples, args.device, args.backend, args.seed, args.tolerance)
    return 0 if accuracy_difference(results) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
