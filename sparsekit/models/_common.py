"""Argument checks and weight initialisation shared by the model builders."""

from __future__ import annotations

import numbers

from torch import nn

__all__ = ["check_positive_int", "init_conv_bn"]


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (numpy integers too; ``bool`` is refused).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal (``fan_out``, ReLU gain) for every ``Conv2d``, weight 1 and bias 0 for every
    ``BatchNorm2d``; ``Linear`` layers keep PyTorch's default initialisation.

    This is torchvision's ResNet/VGG convention for convolutions. Tanaka et al. (2020) use Kaiming
    normal with ``fan_in`` instead; at initialisation the two differ only by a per-layer scale.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
