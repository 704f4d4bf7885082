"""The networks of a reproduce run: the paper's at ``scale="full"``, small ones of the same family at ``"tiny"``.

Tiny networks keep the architecture family (VGG: conv/BN/ReLU stacks with max-pools; ResNet: basic or
bottleneck blocks with 1x1 shortcuts) so a tiny run goes through the same layer kinds, flow repair
cases and trainers as a full one, at a size that trains on a CPU in seconds (8 x 8 digits).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..models import get_model, list_models
from ..models.resnet import BasicBlock, Bottleneck, ResNet
from ..models.vgg import VGG

__all__ = ["build_model", "model_description", "TINY_MODELS"]

#: name -> (family, arguments) of the tiny stand-in of each paper network
TINY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vgg16": ("vgg", {"config": (16, "M", 32, "M", 32, 32)}),
    "vgg19": ("vgg", {"config": (16, 16, "M", 32, 32, "M", 32, 32)}),
    "resnet18": ("resnet", {"block": "basic", "num_blocks": (1, 1, 1), "widths": (8, 16, 32), "stem_width": 8}),
    "resnet20": ("resnet", {"block": "basic", "num_blocks": (1, 1, 1), "widths": (4, 8, 16), "stem_width": 4}),
    "resnet110": ("resnet", {"block": "basic", "num_blocks": (2, 2, 2), "widths": (4, 8, 16), "stem_width": 4}),
    "resnet50": ("resnet", {"block": "bottleneck", "num_blocks": (1, 1), "widths": (4, 8), "stem_width": 8}),
    "mlp": ("mlp", {"hidden": (64, 64)}),
}


def model_description(name: str, scale: str) -> str:
    """What ``build_model`` builds, as recorded in each cell's config (a changed architecture is a changed cell)."""
    if scale == "tiny" and name in TINY_MODELS:
        family, args = TINY_MODELS[name]
        return f"tiny {family} {sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in args.items())}"
    return f"sparsekit.models.{name}"


def build_model(name: str, scale: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised network (seed torch's global RNG first for a reproducible init).

    Raises:
        SparsekitError: unknown model name (the message lists the valid ones).
        ValueError: a convolutional network on non-image data.
    """
    name = name.strip().lower()
    if name == "mlp" or (scale == "tiny" and TINY_MODELS.get(name, ("",))[0] == "mlp"):
        hidden = TINY_MODELS["mlp"][1]["hidden"] if scale == "tiny" else (512, 512)
        return get_model("mlp", num_classes=num_classes, in_features=math.prod(input_shape), hidden=hidden)
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} is convolutional and needs image data of shape (channels, height, width); "
                         f"the data has samples of shape {tuple(input_shape)} (digits: use digits:flat=false)")
    channels = input_shape[0]
    if scale == "tiny" and name in TINY_MODELS:
        family, args = TINY_MODELS[name]
        if family == "vgg":
            return VGG(args["config"], num_classes, in_channels=channels)
        block = BasicBlock if args["block"] == "basic" else Bottleneck
        return ResNet(block, args["num_blocks"], args["widths"], num_classes, in_channels=channels,
                      stem_width=args["stem_width"])
    if name not in list_models():
        get_model(name)  # raises the registry's error naming the valid models
    return get_model(name, num_classes=num_classes, in_channels=channels)
