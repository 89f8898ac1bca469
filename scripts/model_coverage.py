"""What dlkernels.convert does to every torchvision classification model: one row per model.

    python scripts/model_coverage.py                 # the table, all models (built on the meta device: fast)
    python scripts/model_coverage.py resnet18 vgg11  # some models, with what was left and why
    python scripts/model_coverage.py --details       # every model's left entries and notes too

Columns: layers converted, activations fused, and the same for ``convert(model.eval(), fold_batchnorm=True)``
(BatchNorms folded, activations fused after folding), then what was left (count; the reasons follow with
--details or when models are named). Models are built with ``weights=None`` and a small ``num_classes``, on the
meta device (no memory, no compute: the report is about structure), so the whole table takes seconds.

tests/test_nn_models.py imports ``build`` and ``input_size`` from here: the constructor arguments each model
needs live in one place.
"""
import argparse
import contextlib
import sys
import warnings
from unittest import mock
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dlkernels

import torch  # noqa: E402
import torchvision  # noqa: E402

import dlkernels  # noqa: E402

NUM_CLASSES = 10
MODELS = sorted(torchvision.models.list_models(module=torchvision.models))

# Models whose forward needs more than 64x64 (checked: they raise or pool to nothing at 64). inception_v3's
# auxiliary classifier (train mode) needs its nominal 299x299.
LARGER_INPUT = {"maxvit_t": 224, "inception_v3": 299}


def input_size(name):
    """The input side length the tests use: 64 where the model accepts it, else what it needs."""
    return LARGER_INPUT.get(name, 64)


def build(name, device=None):
    """torchvision.models.<name>(weights=None, num_classes=10) with what the model needs for small inputs."""
    kwargs = dict(weights=None, num_classes=NUM_CLASSES)
    if name.startswith("vit_"):
        kwargs["image_size"] = input_size(name) if not name.endswith("_14") else 56  # a multiple of the patch
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True  # the old default, said explicitly (silences torchvision's warning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if device is None:
            return torchvision.models.get_model(name, **kwargs)
        with torch.device(device), _regnet_widths_on_cpu():
            return torchvision.models.get_model(name, **kwargs)


@contextlib.contextmanager
def _regnet_widths_on_cpu():
    """RegNet computes its block widths with tensors (.tolist()): on the meta device there are no values."""
    params = torchvision.models.regnet.BlockParams
    original = params.from_init_params

    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return original(*args, **kwargs)

    with mock.patch.object(params, "from_init_params", on_cpu):
        yield


def _convert(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return dlkernels.convert(model, return_report=True, **kwargs)[1]


def row(name):
    model = build(name, device="meta")
    report = _convert(model)
    folded = _convert(model.eval(), fold_batchnorm=True)
    functional = sum(":" in f.name for f in report.fused)
    functional_folded = sum(":" in f.name for f in folded.fused)
    return {
        "model": name,
        "converted": len(report.converted),
        "fused": len(report.fused),
        "fused_functional": functional,
        "folded": len(folded.folded),
        "fused_after_fold": len(folded.fused),
        "fused_after_fold_functional": functional_folded,
        "left": len(report.left),
        "left_reasons": Counter(f"{e.type}: {e.reason}" for e in dict.fromkeys(report.left + folded.left)),
        "notes": list(dict.fromkeys(report.notes + folded.notes)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: all torchvision classification models)")
    parser.add_argument("--details", action="store_true", help="print what was left and why for every model")
    args = parser.parse_args(argv)
    names = args.models or MODELS
    details = args.details or bool(args.models)
    header = (f"{'model':<20} {'converted':>9} {'fused':>9} {'folded':>6} {'fused+fold':>10} {'left':>4}  "
              "(fused: total/functional)")
    print(header)
    print("-" * len(header))
    rows = []
    for name in names:
        r = row(name)
        rows.append(r)
        print(f"{name:<20} {r['converted']:>9} {r['fused']:>5}/{r['fused_functional']:<3} {r['folded']:>6} "
              f"{r['fused_after_fold']:>6}/{r['fused_after_fold_functional']:<3} {r['left']:>4}")
        if details:
            for reason, count in r["left_reasons"].items():
                print(f"    left x{count}: {reason}")
            for note in r["notes"]:
                print(f"    note: {note}")
    print("-" * len(header))
    print(f"{len(rows)} models: {sum(r['converted'] for r in rows)} layers converted, "
          f"{sum(r['fused'] for r in rows)} activations fused ({sum(r['fused_functional'] for r in rows)} functional); "
          f"for inference {sum(r['folded'] for r in rows)} BatchNorms folded and "
          f"{sum(r['fused_after_fold'] for r in rows)} activations fused; "
          f"{sum(r['left'] for r in rows)} modules left in {sum(bool(r['left']) for r in rows)} models")
    reasons = Counter()
    for r in rows:
        reasons.update(r["left_reasons"])
    if reasons and not details:
        print("what was left, over all models:")
        for reason, count in reasons.most_common():
            print(f"    x{count}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
