"""Small image classifiers that train in seconds on a CPU.

Every model maps ``images: float32 (N, C, H, W)`` to ``logits: float32 (N, num_classes)``.
"""

import math

from torch import nn


class Vanilla(nn.Module):
    """A multilayer perceptron on flattened pixels; its input size comes from the dataset.

    Args:
        input_shape: ``(C, H, W)`` of one image.
        num_classes: number of output logits.
        hidden: widths of the hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(self, input_shape, num_classes, hidden=(256, 128), dropout=0.1):
        super().__init__()
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, images):
        return self.net(images)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (conv-BN-ReLU, the second one twice as wide) and a linear head.

    Global average pooling makes it work for any image size >= 2x2 (:data:`MIN_IMAGE_SIZE`;
    8x8 Digits, 28x28 MNIST, 32x32 CIFAR-10 alike).

    Args:
        input_shape: ``(C, H, W)``; only ``C`` is used.
        num_classes: number of output logits.
        width: channels of the first block.
    """

    def __init__(self, input_shape, num_classes, width=32):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(input_shape[0], width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, images):
        return self.head(self.features(images))


CLASSIFIERS = {"Vanilla": Vanilla, "SmallCNN": SmallCNN}

#: Smallest side H = W each model trains on, even on a last batch of one image (measured on CPU):
#: SmallCNN's 2x2 max-pool makes 2x2 or 3x3 inputs 1x1, where training BatchNorm has one value per
#: channel and raises; below 2x2 the pool has no output at all.
MIN_IMAGE_SIZE = {"Vanilla": 1, "SmallCNN": 2}


def image_size_problem(model_type, side):
    """Why ``model_type`` cannot train on ``side x side`` images (a phrase naming the minimum), or ``None``.

    For a ``ConfigError`` at parse time (see :func:`base.config.checks.check`); unknown names give ``None``.
    """
    minimum = MIN_IMAGE_SIZE.get(model_type, 1)
    if side < minimum:
        return (
            f"{model_type} needs images of at least {minimum}x{minimum} pixels, got {side}x{side} "
            f"(see model.classifiers.MIN_IMAGE_SIZE)"
        )
    return None


def build_classifier(model_type, input_shape, num_classes):
    """Instantiate ``CLASSIFIERS[model_type]``.

    Raises:
        KeyError: unknown ``model_type`` (the flag's ``choices`` normally catch it first).
    """
    return CLASSIFIERS[model_type](tuple(input_shape), num_classes)
