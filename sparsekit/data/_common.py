"""Shared pieces of :mod:`sparsekit.data`: argument checks, optional imports, tensor transforms."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

VISION_HINT = 'pip install "sparsekit[vision]"'

# Per-channel statistics of the training images, in [0, 1] units (paper §3 trains on CIFAR-10/100).
# These are the population mean/std over all training pixels; the often copied CIFAR-10 std
# (0.2023, 0.1994, 0.2010) is the mean of per-image stds and is not used here.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)
# ImageNet statistics, the usual choice for Tiny-ImageNet (paper App. A.12).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- checks
def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_augment(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError("augment must be None (standard augmentation for the training split only), True or False, "
                        f"got {type(value).__name__} {value!r}")
    return value


def check_int(value: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    return int(value)


def check_shape(value: object, name: str = "shape") -> tuple[int, ...]:
    """A non-empty tuple of positive ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"{name} must be a non-empty tuple of positive ints such as (3, 32, 32), "
                        f"got {type(value).__name__} {value!r}")
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{name} must be a non-empty tuple of positive ints such as (3, 32, 32), got {value!r}")
    numel = math.prod(value)
    if numel > 2**24:
        raise ValueError(f"{name} {tuple(value)} has {numel} elements per sample; at most 2**24 are supported")
    return tuple(int(d) for d in value)


def check_root(root: object, name: str = "root") -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(root).__name__} {root!r}")
    text = os.fspath(root)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise ValueError(f"{name} must be a non-empty path to the dataset folder, got {root!r}")
    return Path(text).expanduser()


# ------------------------------------------------------------------------------------- optional imports
def import_torchvision_v2(purpose: str) -> Any:
    """``torchvision.transforms.v2``, or an ImportError that says how to install it."""
    try:
        import torchvision  # noqa: F401
        from torchvision.transforms import v2
    except ImportError as e:
        raise ImportError(f"{purpose} needs torchvision, which is not installed: {VISION_HINT}") from e
    return v2


# ------------------------------------------------------------------------------------------- transforms
class ToFloatNormalize:
    """uint8 image tensor ``C x H x W`` -> float32 ``(x / 255 - mean) / std`` (per channel).

    Pure torch, so test-time preprocessing needs no torchvision. The inverse is
    :meth:`unnormalize` (``round(unnormalize(y)) == x`` exactly).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have the same length and std > 0, got mean={mean!r} std={std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image tensor, got {img.dtype}")
        x = img.to(torch.float32).div_(255.0)
        return x.sub_(self._mean.to(x.device)).div_(self._std.to(x.device))

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float image in [0, 255] units (round and cast to uint8 to recover the pixels)."""
        return (x * self._std.to(x.device) + self._mean.to(x.device)) * 255.0

    def __repr__(self) -> str:
        return f"ToFloatNormalize(mean={self.mean}, std={self.std})"


class Compose:
    """Apply callables in order (a picklable, dependency-free ``transforms.Compose``)."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def image_transform(size: int, mean: Sequence[float], std: Sequence[float], *, augment: bool,
                    dataset: str) -> Compose:
    """``[RandomCrop(size, padding=4), RandomHorizontalFlip()]`` if ``augment``, then :class:`ToFloatNormalize`.

    The random ops are torchvision ``transforms.v2`` working on uint8 tensors (imported only here).
    """
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if augment:
        v2 = import_torchvision_v2(f"{dataset} augmentation (augment=False turns it off)")
        steps += [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
    steps.append(ToFloatNormalize(mean, std))
    return Compose(steps)


# ------------------------------------------------------------------------------------------ tensor sets
class LabeledTensorDataset(TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` ``(features, labels)`` that knows its classes and shape."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, num_classes: int, name: str) -> None:
        super().__init__(features, labels)
        self.num_classes = int(num_classes)
        self.input_shape: tuple[int, ...] = tuple(features.shape[1:])
        self.name = name

    @property
    def features(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")
