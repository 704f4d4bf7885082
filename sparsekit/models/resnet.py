"""ResNets in the CIFAR form: ResNet18/50 (4 stages) and ResNet20/110 (3 stages).

Paper §3: ResNet18 on CIFAR-10 (Tables 1, 7, 11, 12) and ResNet50 on CIFAR-100 (Table 8); ResNet110
on CIFAR-100 (App. A.9.1, Table 15, and App. A.11, Tables 16-17); ResNet20 on Tiny-ImageNet
(App. A.12, Table 19). The paper's code builds on Tanaka et al. (2020) and Liu et al. (2021).

Both forms start with a 3x3 stride-1 convolution + BatchNorm + ReLU and no max-pool (the ImageNet
7x7/stride-2 stem and max-pool would shrink 32x32 images too early), end with a global average pool
and one ``Linear``, and use convolutions without bias. Where a block changes the resolution or the
width, its shortcut is a 1x1 convolution + BatchNorm (``downsample``), elsewhere the identity.

* ResNet18 / ResNet50 (``BasicBlock`` [2, 2, 2, 2] / ``Bottleneck`` [3, 4, 6, 3], expansion 4): stem
  width 64, stages of width 64/128/256/512, stride 2 at the first block of stages 2-4. The Bottleneck
  strides in its 3x3 convolution (as torchvision does).
* ResNet20 / ResNet110 (He et al. 2016, §4.2: 6n+2 layers, n = 3 / 18): stem width 16, three stages of
  n ``BasicBlock`` with width 16/32/64, stride 2 at the first block of stages 2 and 3. The shortcuts
  that change shape are 1x1 convolution + BatchNorm projections as in Tanaka et al.'s
  ``lottery_resnet`` (the paper's code), *not* He et al.'s option A (parameter-free zero padding);
  the two projections add 2,752 parameters (``16*32 + 2*32 + 32*64 + 2*64``) and two prunable layers.

Any input of at least 8x8 pixels works (e.g. 1x8x8 digits with ``in_channels=1``). Convolutions are
Kaiming-normal (``fan_out``), BatchNorm weight 1 and bias 0, the classifier PyTorch's default ``Linear``
(see :func:`~sparsekit.models._common.init_conv_bn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_positive_int, init_conv_bn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50", "resnet20", "resnet110"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """1x1 conv + BN shortcut where the block changes shape, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the projection shortcut).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN, plus a residual connection.

    Args:
        in_planes: input channels.
        planes: width of the 3x3 convolution; the block outputs ``4 * planes`` channels.
        stride: stride of the 3x3 convolution (and of the projection shortcut).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.downsample = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, stages of residual blocks, global average pool, ``Linear``.

    Modules: ``conv1``, ``bn1``, ``relu``, ``layer1`` ... ``layerK`` (one ``nn.Sequential`` per stage),
    ``avgpool`` and ``fc``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage.
        widths: ``planes`` per stage (the stage outputs ``block.expansion * planes`` channels); stages
            after the first start with stride 2.
        num_classes: number of outputs.
        in_channels: channels of the input images.
        stem_width: output channels of the 3x3 stem convolution.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(stem_width, "stem_width")
        if len(num_blocks) != len(widths) or not num_blocks:
            raise ValueError(f"num_blocks and widths must be non-empty and of equal length, got {len(num_blocks)} "
                             f"and {len(widths)}")
        self.conv1 = _conv3x3(in_channels, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        channels = stem_width
        for i, (n, planes) in enumerate(zip(num_blocks, widths, strict=True)):
            check_positive_int(n, "blocks per stage")
            check_positive_int(planes, "stage width")
            blocks = []
            for j in range(n):
                blocks.append(block(channels, planes, 2 if i > 0 and j == 0 else 1))
                channels = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, *, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet18: BasicBlock [2, 2, 2, 2], widths 64-512; paper §3, CIFAR-10.

    Args:
        num_classes: number of outputs (10 for CIFAR-10).
        in_channels: channels of the input images.

    Returns:
        A :class:`ResNet` with 11,173,962 parameters for 10 classes (11,220,132 for 100).
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels=in_channels)


def resnet50(num_classes: int = 10, *, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet50: Bottleneck [3, 4, 6, 3] (expansion 4), widths 64-512; paper §3, CIFAR-100.

    Args:
        num_classes: number of outputs (100 for CIFAR-100).
        in_channels: channels of the input images.

    Returns:
        A :class:`ResNet` with 23,520,842 parameters for 10 classes (23,705,252 for 100).
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels=in_channels)


def resnet20(num_classes: int = 10, *, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet20 (He et al. 2016 §4.2, n = 3) with projection shortcuts; paper App. A.12
    (Tiny-ImageNet).

    Args:
        num_classes: number of outputs (200 for Tiny-ImageNet).
        in_channels: channels of the input images.

    Returns:
        A :class:`ResNet` with 272,474 parameters for 10 classes (278,324 for 100); He et al.'s
        zero-padding shortcuts would have 2,752 fewer (the two 1x1 projections and their BatchNorms).
    """
    return ResNet(BasicBlock, (3, 3, 3), (16, 32, 64), num_classes, in_channels=in_channels, stem_width=16)


def resnet110(num_classes: int = 10, *, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet110 (He et al. 2016 §4.2, n = 18) with projection shortcuts; paper App. A.9.1 and
    A.11 (CIFAR-100).

    Args:
        num_classes: number of outputs (100 for CIFAR-100).
        in_channels: channels of the input images.

    Returns:
        A :class:`ResNet` with 1,730,714 parameters for 10 classes (1,736,564 for 100).
    """
    return ResNet(BasicBlock, (18, 18, 18), (16, 32, 64), num_classes, in_channels=in_channels, stem_width=16)
