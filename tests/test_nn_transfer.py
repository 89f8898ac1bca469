"""Transfer learning as the seed describes it, converted and not: the same losses and the same classifier.

A torchvision resnet18 gets its weights from a checkpoint file (written here: nothing can be downloaded), its
feature layers are frozen, its classifier replaced by a 3-class head and fine-tuned for a few steps."""
import pytest
import torch
import torchvision
from torch import nn

import dlkernels.nn as dnn
from conftest import make_input

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:dlkernels. the compiled extension did not load:RuntimeWarning"),
]

STEPS = 3


def fine_tune(checkpoint, use_dlkernels, images, labels):
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    if use_dlkernels:
        model = dnn.convert(model)
    for p in model.parameters():  # freeze the features
        p.requires_grad_(False)
    torch.manual_seed(1)  # the same initial head in both runs (dnn.Linear initialises like nn.Linear)
    model.fc = dnn.Linear(512, 3) if use_dlkernels else nn.Linear(512, 3)
    model.train()
    for m in model.modules():  # a frozen backbone keeps its BatchNorm statistics too
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
    losses = []
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(model(images), labels)  # one small batch, fitted
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return model, torch.tensor(losses), logits


def test_transfer_learning_from_checkpoint_converted_matches_torch(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoint)
    images = make_input(4, 3, 32, 32, seed=11)
    labels = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(12))

    theirs, losses_t, logits_t = fine_tune(checkpoint, False, images, labels)
    ours, losses, logits = fine_tune(checkpoint, True, images, labels)

    assert isinstance(ours.conv1, dnn.Conv2d) and isinstance(ours.fc, dnn.Linear) and type(theirs.fc) is nn.Linear
    assert not any(p.requires_grad for n, p in ours.named_parameters() if not n.startswith("fc."))
    # float32 through 20 frozen conv layers: our kernels round differently from oneDNN (~1e-6 relative), and
    # Adam's normalised steps carry that into the head; 1e-3 relative / 1e-4 absolute is far below a real bug.
    tol = dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(losses, losses_t, **tol)
    torch.testing.assert_close(ours.fc.weight, theirs.fc.weight, **tol)
    torch.testing.assert_close(ours.fc.bias, theirs.fc.bias, **tol)
    torch.testing.assert_close(logits, logits_t, **tol)
    assert torch.equal(logits.argmax(1), logits_t.argmax(1))
    assert losses[-1] < losses[0]  # it learns
    # The fine-tuned converted model saves a checkpoint the torch model loads.
    theirs.load_state_dict(ours.state_dict())
