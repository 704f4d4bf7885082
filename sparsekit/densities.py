"""Layerwise density schemes (paper §3, "Layerwise Sparsity Ratios").

Every scheme has the same signature::

    scheme(layers, density, **options) -> dict[fqn, float]

``layers`` are :class:`~sparsekit.layers.Layer` objects (only ``fqn``, ``shape`` and ``numel`` are
read, so meta-device models work) in module order, ``density`` is the global target
``p = sum_l p_l m_l / sum_l m_l`` and the result maps each fqn to its density ``p_l`` in ``(0, 1]``.
Allocation is separate from sampling (:mod:`sparsekit.sampling` draws the masks).

Schemes:

* ``er-uniform``: ``p_l = p``.
* ``er-erk``: Erdős–Rényi-Kernel as in RigL (Evci et al. 2020): ``p_l = eps * sum(shape)/prod(shape)``
  (kernel dimensions included); layers whose density would exceed 1 are made dense and ``eps`` is
  solved again so the global budget is met.
* ``er-balanced``: every layer gets the same number of nonzeros ``x = p/L * sum_l m_l`` and
  ``p_l = min(1, x / m_l)`` (paper §3). By default the budget freed by capped layers is shared
  equally among the others (``redistribute=True``) so the global density is met; with
  ``redistribute=False`` this is the paper's capped-only rule and the realised density can be lower.
* ``er-pyramidal``: ``p_l = p_1 ** l`` for the l-th layer in module order (l = 1..L), ``p_1`` in
  ``(0, 1]`` solved so that ``sum_l p_l m_l = p sum_l m_l`` (paper §3; the function is monotone in
  ``p_1``, so bisection in float64 finds the unique root to machine precision).
* ``er-layerwise``: the densities the caller gives, ``densities=[p_1, ..., p_L]`` in module order or
  ``{fqn: p_l}`` (the paper's ``ER(p)`` with an arbitrary vector ``p``, e.g. the source networks of
  :mod:`sparsekit.theory`). The global density defaults to the one these imply; an explicit
  ``density`` must agree with it.

Schemes computed from a model, data or another ticket (``er-snip``, ``er-synflow``, ``er-from`` in
:mod:`sparsekit._data_methods`) keep this signature and declare those as *inputs*
(``register_method(..., inputs=("model", "data"))``): ``prune``/``layer_densities`` pass the model
and the caller's ``data=``/``ticket=`` keywords to them; they are not recorded as options.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from ._registry import INPUTS, Method, MethodInfo, get_method, register_method
from .errors import NoPrunableLayersError
from .layers import FilterFn, Layer, prunable_layers, select

__all__ = ["uniform", "erk", "balanced", "pyramidal", "pyramidal_p1", "layerwise", "layer_densities",
           "validate_density", "split_inputs", "default_density", "DEFAULT_DENSITY", "METHOD_DEFAULT", "MethodDefault"]

#: The global density ``prune`` and ``layer_densities`` use when none is given (unless the method has its own).
DEFAULT_DENSITY = 0.01


class MethodDefault:
    """Type of :data:`METHOD_DEFAULT`, the default of ``density`` in ``prune`` and ``layer_densities``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "METHOD_DEFAULT"


#: ``density`` not given: 0.01, or the method's own (er-from: the source ticket's density). An
#: explicit ``None`` stays an error, so a missing value is never mistaken for a choice.
METHOD_DEFAULT = MethodDefault()


def validate_density(density: object, name: str = "density") -> float:
    """``density`` as a float in (0, 1], or a ValueError naming the argument and the fix."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(density).__name__} {density!r}")
    d = float(density)
    if not math.isfinite(d) or not 0.0 < d <= 1.0:
        hint = " (did you pass a sparsity? density = 1 - sparsity)" if 1.0 < d <= 100.0 or d == 0 else ""
        raise ValueError(f"{name} must be in (0, 1], got {density!r}{hint}")
    return d


@register_method("er-uniform", description="same density p in every layer (paper §3 baseline)",
                 aliases=("uniform",))
def uniform(layers: Sequence[Layer], density: float) -> dict[str, float]:
    """``p_l = p`` for every layer."""
    return {L.fqn: float(density) for L in layers}


@register_method("er-erk", description="Erdős–Rényi-Kernel as in RigL: p_l ∝ sum(shape)/prod(shape), capped at 1",
                 aliases=("erk",))
def erk(layers: Sequence[Layer], density: float, power_scale: float = 1.0) -> dict[str, float]:
    """ERK (RigL's ``erdos_renyi_kernel``): kernel term included, overflowing layers made dense.

    Args:
        power_scale: exponent on the raw ERK score (RigL's ``erk_power_scale``; 1.0 is ERK, 0.0 uniform).
    """
    if isinstance(power_scale, bool) or not isinstance(power_scale, (int, float)) or not math.isfinite(power_scale):
        raise ValueError(f"er-erk option power_scale must be a finite number (1.0 is ERK, 0.0 uniform), got "
                         f"{power_scale!r}")
    raw = {L.fqn: (sum(L.shape) / L.numel) ** power_scale for L in layers}
    dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for L in layers:
            if L.fqn in dense:
                rhs -= L.numel * (1.0 - density)
            else:
                rhs += L.numel * density
                divisor += raw[L.fqn] * L.numel
        if divisor == 0.0:  # everything had to become dense
            return {L.fqn: 1.0 for L in layers}
        eps = rhs / divisor
        free = [f for f in raw if f not in dense]
        max_raw = max(raw[f] for f in free)
        if eps * max_raw > 1.0:
            dense.update(f for f in free if raw[f] == max_raw)
            continue
        return {L.fqn: 1.0 if L.fqn in dense else eps * raw[L.fqn] for L in layers}


@register_method("er-balanced", description="same number of nonzeros in every layer, capped at density 1 (paper §3)",
                 aliases=("balanced",))
def balanced(layers: Sequence[Layer], density: float, redistribute: bool = True) -> dict[str, float]:
    """Every layer gets ``x = p/L * sum_l m_l`` nonzeros, ``p_l = min(1, x/m_l)`` (paper §3).

    Args:
        redistribute: share the budget freed by layers capped at density 1 equally among the
            remaining layers (default), so the global density is met. ``False`` is the paper's rule.
    """
    total = sum(L.numel for L in layers)
    if not redistribute:
        x = density * total / len(layers)
        return {L.fqn: min(1.0, x / L.numel) for L in layers}
    out: dict[str, float] = {}
    remaining = list(layers)
    budget = density * total
    while remaining:
        x = budget / len(remaining)
        capped = [L for L in remaining if L.numel <= x]
        if not capped:
            break
        for L in capped:
            out[L.fqn] = 1.0
            budget -= L.numel
        remaining = [L for L in remaining if L.fqn not in out]
    for L in remaining:
        out[L.fqn] = x / L.numel
    return {L.fqn: out[L.fqn] for L in layers}


def pyramidal_p1(sizes: Sequence[int], density: float) -> float:
    """The unique ``p_1`` in ``(0, 1]`` with ``sum_l m_l p_1**l = p sum_l m_l`` (l = 1..L)."""
    total = float(sum(sizes))
    target = density * total
    if density >= 1.0:
        return 1.0

    def f(q: float) -> float:
        s, power = 0.0, 1.0
        for m in sizes:
            power *= q
            s += m * power
        return s - target

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if f(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return hi


@register_method("er-pyramidal", description="p_l = p_1**l, densities decay with depth like IMP tickets (paper §3)",
                 aliases=("pyramidal",))
def pyramidal(layers: Sequence[Layer], density: float) -> dict[str, float]:
    """``p_l = p_1 ** l`` with ``p_1`` solved for the global budget (paper §3)."""
    p1 = pyramidal_p1([L.numel for L in layers], density)
    return {L.fqn: p1 ** (i + 1) for i, L in enumerate(layers)}


def _layerwise_values(layers: Sequence[Layer], densities: object) -> dict[str, float]:
    """``{fqn: p_l}`` from the ``densities`` option of er-layerwise, validated against ``layers``."""
    names = [L.fqn for L in layers]
    if isinstance(densities, Mapping):
        unknown = sorted(set(map(str, densities)) - set(names))
        missing = [n for n in names if n not in densities]
        if unknown or missing:
            raise ValueError(
                "er-layerwise: the densities mapping must have one entry per prunable layer; "
                + (f"unknown: {', '.join(unknown)}; " if unknown else "")
                + (f"missing: {', '.join(missing)}; " if missing else "")
                + f"the layers are: {', '.join(names)}")
        values = [densities[n] for n in names]
    elif isinstance(densities, Sequence) and not isinstance(densities, (str, bytes)):
        values = list(densities)
        if len(values) != len(names):
            raise ValueError(f"er-layerwise: densities has {len(values)} values but the model has {len(names)} "
                             f"prunable layers ({', '.join(names)}); give one density per layer in module order")
    else:
        raise TypeError("er-layerwise needs the option densities=[p_1, ..., p_L] (module order) or "
                        f"{{fqn: p}}; got {type(densities).__name__}")
    return {n: validate_density(v, f"densities[{n!r}]") for n, v in zip(names, values, strict=True)}


def _layerwise_default(layers: Sequence[Layer], *, densities: object = None) -> float:
    """Global density implied by the er-layerwise option: ``sum_l p_l m_l / sum_l m_l``."""
    if densities is None:
        layerwise(layers, 1.0)  # raises the error that explains the option
    values = _layerwise_values(layers, densities)
    total = sum(L.numel for L in layers)
    return min(1.0, sum(values[L.fqn] * L.numel for L in layers) / total)


@register_method("er-layerwise", description="the given per-layer densities (option densities=[p_1, ...] or {fqn: p})",
                 aliases=("layerwise",), default_density=_layerwise_default)
def layerwise(layers: Sequence[Layer], density: float, densities: object = None) -> dict[str, float]:
    """``p_l`` as given: the paper's ``ER(p)`` with an explicit density vector (§2, "ER networks").

    ``density`` (the global one) must match the densities given, within 1e-9; leave it out and it
    defaults to that value. Layers kept dense with ``dense=`` are not part of ``layers`` here.
    """
    if densities is None:
        raise TypeError("er-layerwise needs the option densities=[p_1, ..., p_L] (module order) or {fqn: p}, "
                        "e.g. sparsekit.prune(model, 'er-layerwise', densities=[1.0, 0.1, 0.1])")
    values = _layerwise_values(layers, densities)
    implied = sum(values[L.fqn] * L.numel for L in layers) / sum(L.numel for L in layers)
    if abs(implied - density) > 1e-9 * max(1.0, density) + 1e-12:
        raise ValueError(f"er-layerwise: the densities given imply a global density of {implied:.10g}, but "
                         f"density={density:.10g} was passed; leave density out (it defaults to the implied one)")
    return values


def resolve_method(method: str | Method, options: dict | None = None) -> Method:
    """A :class:`Method` from a name or config plus extra options."""
    if isinstance(method, Method):
        if options:
            return Method(method.name, {**method.options, **options})
        return method
    get_method(method)  # raises a clear error for unknown names
    return Method(method, options or {})


def _info(method: str | Method) -> MethodInfo:
    return method.info if isinstance(method, Method) else get_method(method)


def split_inputs(method: str | Method, options: dict[str, object],
                 model: nn.Module | None = None) -> tuple[Method, dict[str, object]]:
    """``(Method with the options, inputs)``: keywords the method declares as inputs are taken out of
    ``options``; ``model`` is added when the method needs it."""
    info = _info(method)
    inputs = {k: options.pop(k) for k in list(options) if k in info.inputs}
    if "model" in info.inputs and model is not None:
        inputs["model"] = model
    return resolve_method(method, options), inputs


def default_density(method: str | Method, layers: Sequence[Layer], inputs: Mapping[str, object]) -> float:
    """The global density to use when the caller gives none: the method's own (er-from) or 0.01."""
    info = _info(method)
    if info.default_density is None:
        return DEFAULT_DENSITY
    _check_inputs(info, inputs)
    # A default may also read the method's options (er-layerwise: its densities), if it names them.
    params = inspect.signature(info.default_density).parameters
    options = {k: v for k, v in method.options.items() if k in params} if isinstance(method, Method) else {}
    return info.default_density(layers, **inputs, **options)


def _check_inputs(info: MethodInfo, inputs: Mapping[str, object]) -> None:
    missing = [k for k in info.inputs if inputs.get(k) is None]
    if missing:
        what = "; ".join(f"{k}: {INPUTS[k]}" for k in missing)
        given = [k for k in missing if k != "model"]
        how = f"e.g. sparsekit.prune(model, {info.name!r}, density, {', '.join(f'{k}=...' for k in given)})" \
            if given else "call it through sparsekit.prune or sparsekit.layer_densities, which pass the model"
        raise TypeError(f"method {info.name!r} needs {', '.join(map(repr, missing))} ({what}); {how}")


def densities_for_layers(
    layers: Sequence[Layer], method: str | Method, density: float, dense: Iterable[str] = (),
    *, inputs: Mapping[str, object] | None = None, **options: object
) -> dict[str, float]:
    """Per-layer densities for already discovered ``layers`` (see :func:`layer_densities`).

    ``inputs`` are the method's inputs (``model``, ``data``, ``ticket``; see
    :func:`sparsekit.register_method`), passed to its scheme and not recorded.
    """
    density = validate_density(density)
    m = resolve_method(method, options)
    inputs = dict(inputs or {})
    if not layers:
        raise NoPrunableLayersError("no prunable layers")
    keep_dense = select(list(layers), dense, "dense") if dense else set()
    sparse = [L for L in layers if L.fqn not in keep_dense]
    total = sum(L.numel for L in layers)
    dense_size = total - sum(L.numel for L in sparse)
    out = {L.fqn: 1.0 for L in layers if L.fqn in keep_dense}
    if not sparse or density >= 1.0:
        return {L.fqn: 1.0 for L in layers}
    # The global budget includes the layers kept dense.
    p_sparse = (density * total - dense_size) / (total - dense_size)
    if p_sparse <= 0.0:
        raise ValueError(
            f"density {density} is too low: the layers kept dense already hold "
            f"{dense_size / total:.4g} of the prunable weights; raise density or keep fewer layers dense")
    _check_inputs(m.info, inputs)  # only now: at density 1 no method needs its inputs
    dens = m.info.densities(sparse, min(1.0, p_sparse), **m.options, **inputs)
    for L in sparse:
        d = float(dens[L.fqn])
        if not 0.0 < d <= 1.0 + 1e-12:
            raise ValueError(f"method {m.name!r} gave density {d} to {L.fqn}; densities must lie in (0, 1]")
        out[L.fqn] = min(1.0, d)
    return {L.fqn: out[L.fqn] for L in layers}


def layer_densities(
    model: nn.Module,
    method: str | Method = "er-balanced",
    density: float | MethodDefault = METHOD_DEFAULT,
    *,
    filter_fn: FilterFn | None = None,
    dense: Iterable[str] = (),
    **options: object,
) -> dict[str, float]:
    """Per-layer densities ``{fqn: p_l}`` that ``prune`` would use, without drawing masks.

    Works on meta-device models (except for methods that run the model: er-snip, er-synflow).
    ``density`` defaults to 0.01, or to the method's own (er-from: the source ticket's). ``dense``
    names layers kept at density 1 (they count towards the global budget); ``options`` go to the
    method (e.g. ``redistribute=False`` for er-balanced), and so do its inputs (``data=`` for
    er-snip, ``ticket=`` for er-from).
    """
    from ._wrappers import unwrap

    model = unwrap(model)  # torch.compile / DDP wrappers: the names prune uses
    m, inputs = split_inputs(method, dict(options), model)
    layers = prunable_layers(model, filter_fn)
    if isinstance(density, MethodDefault):
        density = default_density(m, layers, inputs)
    return densities_for_layers(layers, m, density, dense, inputs=inputs)
