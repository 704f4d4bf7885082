"""The paper's networks, built by name: ``get_model("vgg16")``, ``list_models()``.

Paper §3 trains VGG16 and ResNet18 on CIFAR-10 and VGG19 and ResNet50 on CIFAR-100; App. A.9.1 and
A.11 add ResNet110 on CIFAR-100 and App. A.12 VGG19 and ResNet20 on Tiny-ImageNet. The CIFAR forms
here (:mod:`~sparsekit.models.vgg`, :mod:`~sparsekit.models.resnet`) follow the code the paper builds
on (Tanaka et al. 2020; Liu et al. 2021); :func:`mlp` is a small fully connected network for quick
checks (8x8 digits). On the command line, ``sparsekit:NAME[:KEY=VALUE,...]`` builds them, e.g.
``sparsekit prune sparsekit:vgg19:num_classes=100 ...``.

Example:
    >>> import sparsekit
    >>> from sparsekit.models import get_model
    >>> model = get_model("resnet20", num_classes=200)  # Tiny-ImageNet, App. A.12
    >>> ticket = sparsekit.prune(model, method="er-balanced", density=0.05)

Every builder accepts ``num_classes``; the convolutional ones also take ``in_channels`` (default 3).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..errors import SparsekitError
from .mlp import mlp
from .resnet import resnet18, resnet20, resnet50, resnet110
from .vgg import vgg16, vgg19

__all__ = ["get_model", "list_models", "register_model",
           "vgg16", "vgg19", "resnet18", "resnet50", "resnet20", "resnet110", "mlp"]

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)

_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[B], B]:
    """Decorator registering a model builder under ``name`` (case-insensitive) for :func:`get_model`.

    The builder must accept a ``num_classes`` keyword argument and return an ``nn.Module``.

    Example:
        >>> @register_model("tiny-cnn")
        ... def tiny_cnn(num_classes: int = 10) -> nn.Module:
        ...     ...

    Raises:
        TypeError: ``name`` is not a string or the builder has no ``num_classes`` argument.
        ValueError: ``name`` is empty or already registered.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if not key or ":" in key:
        raise ValueError(f"model name must be a non-empty string without ':', got {name!r}")

    def deco(fn: B) -> B:
        if not callable(fn):
            raise TypeError(f"register_model({name!r}) needs a callable, got {type(fn).__name__}")
        params = inspect.signature(fn).parameters
        if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"model builder {getattr(fn, '__name__', fn)!r} must accept a num_classes argument")
        if key in _MODELS:
            raise ValueError(f"model name {key!r} is already registered; choose another name")
        _MODELS[key] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_MODELS)


def get_model(name: str, *, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the model registered under ``name`` (case-insensitive), freshly initialised.

    Args:
        name: one of :func:`list_models`: ``vgg16``, ``vgg19``, ``resnet18``, ``resnet50``, ``resnet20``,
            ``resnet110``, ``mlp``.
        num_classes: number of outputs (CIFAR-10: 10, CIFAR-100: 100, Tiny-ImageNet: 200).
        **kwargs: further builder arguments, e.g. ``in_channels=1`` for the convolutional networks or
            ``in_features``/``hidden``/``activation`` for ``mlp``.

    Raises:
        SparsekitError: no model is registered under ``name``; the message lists the valid names.
        TypeError: a keyword argument the builder does not take (the message lists those it takes),
            or an argument of the wrong type.
        ValueError: an argument value is out of range (e.g. ``num_classes=0``).
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _MODELS:
        close = difflib.get_close_matches(key, list(_MODELS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SparsekitError(f"unknown model {name!r}{hint}; valid models: {', '.join(list_models())}")
    builder = _MODELS[key]
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise TypeError(f"model {key!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                            f"it accepts: {', '.join(accepted)}")
    return builder(num_classes=num_classes, **kwargs)


for _name, _builder in (("vgg16", vgg16), ("vgg19", vgg19), ("resnet18", resnet18), ("resnet50", resnet50),
                        ("resnet20", resnet20), ("resnet110", resnet110), ("mlp", mlp)):
    register_model(_name)(_builder)
del _name, _builder
