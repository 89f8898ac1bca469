"""The seed's CNN, TinyVGG ((Conv-ReLU-Conv-ReLU-MaxPool) x 2, then a Linear classifier), trained twice.

Once with torch.nn, once converted to dlkernels (the same initial weights, the same batches in the same
order), then both accuracies, losses and step times side by side. The accuracies must agree: the script exits
with status 1 when they differ by more than --tolerance percentage points.

Data: Fashion-MNIST from a local copy when --data-dir is given (torchvision.datasets.FashionMNIST(root=...,
download=False): the folder holds FashionMNIST/raw/), else scikit-learn's bundled 8x8 digits.

    python examples/tinyvgg.py                                   # digits, 10 epochs, ~10 s on a laptop CPU
    python examples/tinyvgg.py --data-dir ~/data --epochs 1      # Fashion-MNIST
    python examples/tinyvgg.py --device cuda
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


class TinyVGG(nn.Module):
    """The CNN explainer's TinyVGG, as in the seed's notes: two conv blocks and a linear classifier."""

    def __init__(self, in_channels, hidden_units, num_classes, image_size):
        super().__init__()

        def block(cin):
            return nn.Sequential(
                nn.Conv2d(cin, hidden_units, kernel_size=3, stride=1, padding=1), nn.ReLU(),
                nn.Conv2d(hidden_units, hidden_units, kernel_size=3, stride=1, padding=1), nn.ReLU(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            )

        self.block_1 = block(in_channels)
        self.block_2 = block(hidden_units)
        side = image_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(hidden_units * side * side, num_classes))

    def forward(self, x):
        return self.classifier(self.block_2(self.block_1(x)))


def load_data(data_dir, seed, train_limit=None):
    """(X_train, y_train, X_test, y_test) as float images in [0, 1] of shape (N, 1, H, W), and a name."""
    if data_dir:
        from torchvision.datasets import FashionMNIST

        train = FashionMNIST(root=data_dir, train=True, download=False)
        test = FashionMNIST(root=data_dir, train=False, download=False)
        # The uint8 tensors straight from the dataset: no per-image PIL conversion.
        X_train, y_train = train.data.unsqueeze(1).float() / 255, train.targets
        X_test, y_test = test.data.unsqueeze(1).float() / 255, test.targets
        name = "Fashion-MNIST"
    else:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        X = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
        y = torch.tensor(digits.target, dtype=torch.int64)
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
        name = "digits (scikit-learn)"
    if train_limit:
        X_train, y_train = X_train[:train_limit], y_train[:train_limit]
    return (X_train, y_train, X_test, y_test), name


def evaluate(model, X, y, loss_fn, batch_size=1000):
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(X), batch_size):
            logits = model(X[i:i + batch_size])
            loss += loss_fn(logits, y[i:i + batch_size]).item() * len(logits)
            correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    return loss / len(X), correct / len(X) * 100


def train(model, data, epochs, batch_size, lr, seed, device):
    X_train, y_train, X_test, y_test = (t.to(device) for t in data)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)  # the same batches, in the same order, for both models
    step_times = []
    total = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(X_train), generator=order).split(batch_size):
            batch = batch.to(device)
            start = time.perf_counter()
            loss = loss_fn(model(X_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - start)
    total = time.perf_counter() - total
    train_loss, train_acc = evaluate(model, X_train, y_train, loss_fn)
    test_loss, test_acc = evaluate(model, X_test, y_test, loss_fn)
    return {
        "train loss": train_loss,
        "test loss": test_loss,
        "train acc %": train_acc,
        "test acc %": test_acc,
        "step ms": sorted(step_times)[len(step_times) // 2] * 1e3,  # median: the first steps warm up
        "train s": total,
    }


def run(data_dir=None, epochs=None, batch_size=32, lr=0.1, hidden_units=10, device="cpu", backend="auto", seed=42,
        train_limit=None, tolerance=1.0):
    """Trains both models; returns {"torch.nn": metrics, "dlkernels": metrics}."""
    device = torch.device(device)
    data, name = load_data(data_dir, seed, train_limit)
    if epochs is None:
        epochs = 1 if data_dir else 10
    image_size = data[0].shape[-1]
    print(f"{name}: {len(data[0])} training images of {image_size}x{image_size}, {len(data[2])} test images, "
          f"{epochs} epoch(s), batch {batch_size}, device {device}")
    torch.manual_seed(seed)
    model = TinyVGG(1, hidden_units, 10, image_size).to(device)
    converted, report = dlkernels.nn.convert(model, backend=backend, return_report=True)  # a copy: same weights
    print(report.summary())
    results = {
        "torch.nn": train(model, data, epochs, batch_size, lr, seed, device),
        "dlkernels": train(converted, data, epochs, batch_size, lr, seed, device),
    }
    report_agreement(results, tolerance)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with FashionMNIST/raw/ (no download)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 10 on digits, 1 on Fashion-MNIST")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--hidden-units", type=int, default=10)
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto", choices=dlkernels.BACKENDS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (1 suits these small layers; 0 keeps torch's default)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="largest accepted accuracy difference, points")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args.data_dir, args.epochs, args.batch_size, args.lr, args.hidden_units, args.device, args.backend,
                  args.seed, args.train_limit, args.tolerance)
    return 0 if accuracy_difference(results) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
