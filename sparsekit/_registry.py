"""Method registry: name -> layerwise density scheme. ``list_methods()`` lists them.

A method is a function ``(layers, density, **options) -> dict[fqn, float]`` (see
:mod:`sparsekit.densities`) registered with :func:`register_method`. ``prune`` then draws an
Erdős–Rényi mask with these densities. Names are case-insensitive; each method may have short
aliases (``"pyramidal"`` for ``"er-pyramidal"``).

Options and inputs: a method's keyword arguments are its *options* (hyper-parameters such as
``redistribute=False``, recorded in the ticket), except those it declares as *inputs* with
``register_method(..., inputs=(...))``: objects the ratios are computed from, which are not recorded
(``model``, the module being pruned, is supplied by ``prune``/``layer_densities``; ``data``, a
DataLoader or Dataset; ``ticket``, a Ticket or ticket file). ``prune(model, "er-snip", 0.01, data=loader)``
passes ``data`` to the scheme as an input (the ER randomisations of SNIP, SynFlow and IMP ratios,
paper §3). A method may also give a default global density (``er-from``: the source ticket's).
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
DefaultDensityFn = Callable[..., float]

#: Inputs a method may declare, with what the caller passes (used in error messages).
INPUTS = {
    "model": "the module being pruned (prune and layer_densities pass it)",
    "data": "a DataLoader or Dataset of (input, target) batches",
    "ticket": "a sparsekit.Ticket or the path of a ticket file",
}


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its canonical name, aliases, description and density function.

    Attributes:
        inputs: keyword arguments of the density function that are inputs (``model``, ``data``,
            ``ticket``), not options: required, passed at call time and never recorded in a ticket.
        default_density: ``fn(layers, **inputs) -> float``, the global density used when the caller
            gives none (``er-from``: the source ticket's); None means 0.01.
    """

    name: str
    densities: DensityFn
    description: str
    aliases: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    default_density: DefaultDensityFn | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the keyword options the density function accepts (its inputs excluded)."""
        params = list(inspect.signature(self.densities).parameters.values())[2:]
        return tuple(p.name for p in params
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in self.inputs)


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
        inputs = [k for k in unknown if k in info.inputs]
        if inputs:
            raise TypeError(
                f"{', '.join(map(repr, inputs))} is an input of method {info.name!r}, not an option: pass it to "
                f"prune or layer_densities as a keyword, e.g. prune(model, {info.name!r}, ..., {inputs[0]}=...)")
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


def register_method(name: str, *, description: str, aliases: Sequence[str] = (), inputs: Sequence[str] = (),
                    default_density: DefaultDensityFn | None = None) -> Callable[[DensityFn], DensityFn]:
    """Decorator registering a layerwise density scheme under ``name``.

    Args:
        name: canonical name (case-insensitive).
        description: one line for ``sparsekit methods``.
        aliases: short names.
        inputs: keyword arguments of the scheme that are inputs rather than options (see
            :data:`INPUTS`): required, passed by the caller (``model`` by ``prune`` itself) and not
            recorded in the ticket.
        default_density: ``fn(layers, **inputs) -> float``, the global density when none is given.

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
        params = inspect.signature(fn).parameters
        bad = [i for i in inputs if i not in INPUTS or i not in params]
        if bad:
            raise ValueError(f"inputs {bad} of method {name!r}: each input must be one of {sorted(INPUTS)} and a "
                             "keyword argument of the density function")
        _METHODS[key] = MethodInfo(key, fn, description, tuple(a.lower() for a in aliases), tuple(inputs),
                                   default_density)
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
