"""The examples, in quick modes: both runs (torch.nn and converted) must reach the same accuracy."""
import importlib.util
import struct
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_accuracies_agree(results, tolerance):
    ours, theirs = results["dlkernels"], results["torch.nn"]
    assert abs(ours["test acc %"] - theirs["test acc %"]) <= tolerance
    assert abs(ours["train acc %"] - theirs["train acc %"]) <= tolerance


def test_mlp_circles_quick(one_thread, capsys):
    example = load_example("mlp_circles")
    assert example.main(["--epochs", "100", "--samples", "400"]) == 0
    printed = capsys.readouterr().out
    assert "torch.nn" in printed and "dlkernels" in printed and "test accuracies agree" in printed
    results = example.run(epochs=100, n_samples=400)
    assert_accuracies_agree(results, tolerance=1.0)
    assert results["torch.nn"]["test acc %"] > 80  # it learns: the circles are separable


def test_tinyvgg_digits_quick(one_thread, capsys):
    example = load_example("tinyvgg")
    results = example.run(epochs=3)
    assert_accuracies_agree(results, tolerance=1.0)
    assert results["torch.nn"]["test acc %"] > 15  # three short epochs (10 reach ~90%): above chance (10%)
    assert "test accuracies agree" in capsys.readouterr().out


def _write_idx(path, array):
    """The IDX files (uint8) torchvision's MNIST-style datasets read."""
    header = struct.pack(">I", 0x0800 + array.dim()) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def test_tinyvgg_fashion_mnist_data_dir(one_thread, tmp_path):
    """--data-dir reads FashionMNIST/raw/ with torchvision (here a tiny fake copy the test writes)."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 256), ("t10k", 64)):
        labels = torch.randint(0, 10, (n,), generator=g)
        # Learnable fake images: a bright square whose position encodes the label.
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, label in enumerate(labels.tolist()):
            r, c = divmod(label, 5)
            images[i, 4 + 10 * r:12 + 10 * r, 2 + 5 * c:6 + 5 * c] = 255
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    example = load_example("tinyvgg")
    assert example.main(["--data-dir", str(tmp_path), "--epochs", "2", "--batch-size", "16"]) == 0
