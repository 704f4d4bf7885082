"""Method registry: name -> layerwise density scheme. ``list_methods()`` lists them.

A method is a function ``(layers, density, **options) -> dict[fqn, float]`` (see
:mod:`sparsekit.densities`) registered with :func:`register_method`. ``prune`` then draws an
Erdős–Rényi mask with these densities. Names are case-insensitive; each method may have short
aliases (``"pyramidal"`` for ``"er-pyramidal"``).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import UnknownMethodError

__all__ = ["Method", "MethodInfo", "register_method", "get_method", "list_methods"]

DensityFn = Callable[..., dict[str, float]]


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its canonical name, aliases, description and density function."""

    name: str
    densities: DensityFn
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the keyword options the density function accepts."""
        params = list(inspect.signature(self.densities).parameters.values())[2:]
        return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


@dataclass(frozen=True)
class Method:
    """A method name plus options, the config object behind ``method="er-balanced"``.

    Example:
        >>> sparsekit.prune(model, method=Method("er-balanced", {"redistribute": False}), density=0.01)
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        info = get_method(self.name)
        object.__setattr__(self, "name", info.name)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        unknown = sorted(set(self.options) - set(info.options))
        if unknown:
            accepted = ", ".join(info.options) or "none"
            raise TypeError(
                f"method {info.name!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"accepted options: {accepted}")

    @property
    def info(self) -> MethodInfo:
        return get_method(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


_METHODS: dict[str, MethodInfo] = {}
_ALIASES: dict[str, str] = {}


def register_method(name: str, *, description: str, aliases: Sequence[str] = ()) -> Callable[[DensityFn], DensityFn]:
    """Decorator registering a layerwise density scheme under ``name``.

    Example:
        >>> @register_method("er-first-dense", description="first layer dense, rest uniform")
        ... def first_dense(layers, density):
        ...     ...
    """

    def deco(fn: DensityFn) -> DensityFn:
        key = name.lower()
        taken = [n for n in (key, *(a.lower() for a in aliases)) if n in _METHODS or n in _ALIASES]
        if taken:
            raise ValueError(f"method name(s) {taken} already registered; choose another name")
        _METHODS[key] = MethodInfo(key, fn, description, tuple(a.lower() for a in aliases))
        for a in aliases:
            _ALIASES[a.lower()] = key
        return fn

    return deco


def get_method(name: str) -> MethodInfo:
    """The method registered under ``name`` or one of its aliases (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string or sparsekit.Method, got {type(name).__name__}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        valid = ", ".join(sorted(_METHODS))
        raise UnknownMethodError(
            f"unknown method {name!r}; valid methods: {valid} (short names without 'er-' work too); "
            "register a new one with @sparsekit.register_method")
    return _METHODS[key]


def list_methods(pattern: str | None = None) -> list[str]:
    """Canonical names of registered methods, optionally filtered by a glob ``pattern``."""
    names = sorted(_METHODS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def method_infos() -> list[MethodInfo]:
    return [_METHODS[n] for n in sorted(_METHODS)]
