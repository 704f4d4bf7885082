"""VGG16 and VGG19 with batch normalisation, in the CIFAR form.

Paper §3: VGG16 on CIFAR-10 (Tables 2, 4, 9, 13, 20, 21) and VGG19 on CIFAR-100 (Tables 3, 10,
Figure 6); VGG19 also on Tiny-ImageNet (App. A.12, Table 18). The paper's code builds on Tanaka et
al. (2020) and Liu et al. (2021).

Layout: each number in the configuration is ``Conv2d(3x3, padding 1, bias=False) + BatchNorm2d +
ReLU``, each ``"M"`` a ``MaxPool2d(2)``; then ``AdaptiveAvgPool2d(1)``, flatten and a single
``Linear(512, num_classes)``. Five max-pools divide the side by 32, so inputs need at least 32x32
pixels (CIFAR); 64x64 Tiny-ImageNet images give a 2x2 map that the adaptive pool averages. Smaller
inputs (e.g. 8x8 digits) make a max-pool fail in the forward pass; use a ResNet or :func:`mlp` there.

Differences from Tanaka et al.'s ``lottery_vgg`` (which the brief for this module fixed): convolutions
have no bias (BatchNorm follows each one), the pool is adaptive instead of ``AvgPool2d(2)``, and
convolutions use Kaiming normal with ``fan_out`` (see :func:`~sparsekit.models._common.init_conv_bn`);
the classifier keeps PyTorch's default ``Linear`` initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_positive_int, init_conv_bn

__all__ = ["VGG", "VGG_CONFIGS", "vgg16", "vgg19"]

#: Conv widths per layer; ``"M"`` is a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """A VGG network with BatchNorm for small images (CIFAR, Tiny-ImageNet).

    Modules: ``features`` (the conv/BN/ReLU/max-pool stack), ``avgpool``
    (``AdaptiveAvgPool2d(1)``) and ``classifier`` (one ``Linear``).

    Args:
        config: conv widths, ``"M"`` for a ``MaxPool2d(2)``; see :data:`VGG_CONFIGS`.
        num_classes: number of outputs.
        in_channels: channels of the input images.
    """

    def __init__(self, config: Sequence[int | str], num_classes: int = 10, *, in_channels: int = 3) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            width = check_positive_int(item, "VGG config width")
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        if channels == in_channels:
            raise ValueError("VGG config must contain at least one convolution width")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 10, *, in_channels: int = 3) -> VGG:
    """VGG16 with BatchNorm (13 convolutions, 1 linear layer); paper §3, CIFAR-10.

    Args:
        num_classes: number of outputs (10 for CIFAR-10).
        in_channels: channels of the input images.

    Returns:
        A :class:`VGG` with 14,724,042 parameters for 10 classes (14,770,212 for 100). Inputs need at
        least 32x32 pixels.
    """
    return VGG(VGG_CONFIGS["vgg16"], num_classes, in_channels=in_channels)


def vgg19(num_classes: int = 10, *, in_channels: int = 3) -> VGG:
    """VGG19 with BatchNorm (16 convolutions, 1 linear layer); paper §3, CIFAR-100, and App. A.12
    (Tiny-ImageNet).

    Args:
        num_classes: number of outputs (100 for CIFAR-100, 200 for Tiny-ImageNet).
        in_channels: channels of the input images.

    Returns:
        A :class:`VGG` with 20,035,018 parameters for 10 classes (20,081,188 for 100). Inputs need at
        least 32x32 pixels.
    """
    return VGG(VGG_CONFIGS["vgg19"], num_classes, in_channels=in_channels)
