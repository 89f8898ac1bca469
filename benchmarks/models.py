"""The models of the model-level cases: the seed's TinyVGG and torchvision's vgg11 (random weights)."""
from torch import nn


class TinyVGG(nn.Module):
    """The seed's CNN (the learnpytorch.io TinyVGG): two blocks of [conv3x3 -> ReLU -> conv3x3 -> ReLU ->
    maxpool 2x2], then a linear classifier. 28x28x1 inputs (FashionMNIST) or 64x64x3 inputs."""

    def __init__(self, in_channels=1, hidden=10, classes=10, size=28):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1), nn.ReLU(),
                nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1), nn.ReLU(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            )

        self.block_1 = block(in_channels, hidden)
        self.block_2 = block(hidden, hidden)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(hidden * (size // 4) ** 2, classes))

    def forward(self, x):
        return self.classifier(self.block_2(self.block_1(x)))


def vgg11(classes=1000):
    """torchvision's vgg11 with random weights and dropout off (so that a training step is deterministic and
    comparable with the float64 reference)."""
    import torchvision

    return torchvision.models.vgg11(weights=None, num_classes=classes, dropout=0.0)


def build(name, **kwargs):
    if name == "tinyvgg":
        return TinyVGG(**kwargs)
    if name == "vgg11":
        return vgg11(**kwargs)
    raise ValueError(f"unknown model {name!r}")
