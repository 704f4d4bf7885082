"""Discovery of the prunable weights of any ``nn.Module``.

A prunable weight is described by a :class:`Layer`: its fully qualified parameter name (fqn), its
shape and which axis holds the outputs ("rows": output neurons/filters) and which the inputs
("columns": input neurons/channels), plus the number of groups. Flow preservation (paper App. A.1)
and the ERK scheme read these axes; everything else only needs shapes.

Built in:

==================================  =======================  ===========  =========
module                              parameter                out axis     in axis
==================================  =======================  ===========  =========
``nn.Linear`` (and subclasses)      ``weight`` (out, in)     0            1
``nn.Conv1d/2d/3d``                 ``weight`` (out, in/g,k) 0            1 (groups)
``nn.ConvTranspose1d/2d/3d``        ``weight`` (in, out/g,k) 1 (groups)   0
``nn.MultiheadAttention``           ``in_proj_weight`` or    0            1
                                    ``q/k/v_proj_weight``
transformers-style ``Conv1D``       ``weight`` (in, out)     1            0
``nn.Embedding``/``EmbeddingBag``   ``weight`` (num, dim)    1            0
==================================  =======================  ===========  =========

``nn.MultiheadAttention.out_proj`` is an ``nn.Linear`` and is found as such. Embeddings are found
but excluded by the default filter; pass ``filter_fn=lambda module, name: True`` to include them.
A Parameter shared by several modules (tied weights) is one layer with one mask, named by its first
fqn in module order; the other names are kept as ``aliases``.

Other module types with a weight of two or more dimensions raise :class:`UnsupportedLayerError`
unless excluded by ``filter_fn``, registered with :func:`register_layer_type` (per class) or
declared with :func:`declare_layouts` (per instance).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import NoPrunableLayersError, UnsupportedLayerError

__all__ = [
    "Layer",
    "LayerLayout",
    "find_layers",
    "register_layer_type",
    "declare_layouts",
    "default_filter",
    "FilterFn",
]

FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class LayerLayout:
    """How to read a weight's axes: ``out_axis`` (rows), ``in_axis`` (columns), ``groups``.

    All remaining axes are kernel axes. For grouped weights the grouped axis is the one of size
    ``channels / groups`` (the in axis for convolutions, the out axis for transposed ones); the other
    of the two axes is split into ``groups`` equal blocks.
    """

    out_axis: int = 0
    in_axis: int = 1
    groups: int = 1


@dataclass
class Layer:
    """One prunable weight.

    Attributes:
        fqn: fully qualified parameter name, e.g. ``"features.0.weight"``.
        module_fqn: name of the owning module.
        module_type: class name of the owning module.
        shape: shape of the weight.
        layout: axes of the weight.
        param: the Parameter itself (may live on the meta device).
        aliases: further fqns under which the same Parameter is reachable (tied weights).
    """

    fqn: str
    module_fqn: str
    module_type: str
    shape: tuple[int, ...]
    layout: LayerLayout
    param: torch.Tensor = field(repr=False)
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def _lead_is_out(self) -> bool:
        return self.layout.out_axis < self.layout.in_axis

    def _perm(self) -> list[int]:
        lo = self.layout
        lead, second = (lo.out_axis, lo.in_axis) if self._lead_is_out else (lo.in_axis, lo.out_axis)
        return [lead, second] + [a for a in range(len(self.shape)) if a not in (lead, second)]

    def grid(self) -> tuple[int, int, int, int]:
        """``(groups, rows per group, columns per group, kernel elements)`` of the weight.

        Of the out and in axes, the one that comes first in the weight is split into ``groups``
        blocks and the other already counts per group: Conv ``(out, in/g, k)``, ConvTranspose
        ``(in, out/g, k)``.
        """
        g = self.layout.groups
        lead, second = (self.shape[a] for a in self._perm()[:2])
        k = self.numel // (lead * second) if lead * second else 0
        if self._lead_is_out:
            return g, lead // g, second, k
        return g, second, lead // g, k

    def as_grid(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (this layer's shape) as ``(groups, rows, cols, kernel)``; for reading only."""
        g, r, c, k = self.grid()
        v = t.permute(self._perm())
        if self._lead_is_out:
            return v.reshape(g, r, c, k)
        return v.reshape(g, c, r, k).transpose(1, 2)

    def flat_index(self, g: torch.Tensor, r: torch.Tensor, c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Flat (C-order) index into the weight of grid entries ``(g, r, c, k)``."""
        G, R, C, K = self.grid()
        if self._lead_is_out:
            lead, second = g * R + r, c
        else:
            lead, second = g * C + c, r
        perm = self._perm()
        strides = [math.prod(self.shape[a + 1:]) for a in range(len(self.shape))]
        flat = lead * strides[perm[0]] + second * strides[perm[1]]
        rest = perm[2:]
        rem = k
        for a in reversed(rest):
            flat = flat + (rem % self.shape[a]) * strides[a]
            rem = rem // self.shape[a]
        return flat


_Reader = Callable[[nn.Module], list[tuple[str, LayerLayout]]]
_REGISTRY: dict[type, _Reader] = {}


def register_layer_type(
    module_type: type,
    params: Iterable[str] | Callable[[nn.Module], list[tuple[str, LayerLayout]]] = ("weight",),
    *,
    out_axis: int = 0,
    in_axis: int = 1,
    groups: str | int | None = None,
) -> None:
    """Teach sparsekit how to read a custom module's weights.

    Args:
        module_type: the module class (subclasses match too).
        params: names of the prunable parameters, or a function ``module -> [(name, LayerLayout)]``.
        out_axis: axis of the outputs (rows) of each weight.
        in_axis: axis of the inputs (columns).
        groups: an attribute name holding the number of groups, a fixed number, or None for 1.

    Example:
        >>> class Bilinear2(nn.Module): ...
        >>> register_layer_type(Bilinear2, ("weight",), out_axis=0, in_axis=1)
    """
    if callable(params):
        _REGISTRY[module_type] = params  # type: ignore[assignment]
        return
    names = tuple(params)

    def read(m: nn.Module) -> list[tuple[str, LayerLayout]]:
        g = getattr(m, groups) if isinstance(groups, str) else (groups or 1)
        return [(n, LayerLayout(out_axis, in_axis, int(g))) for n in names if getattr(m, n, None) is not None]

    _REGISTRY[module_type] = read


def _conv(m: nn.Module) -> list[tuple[str, LayerLayout]]:
    return [("weight", LayerLayout(0, 1, int(getattr(m, "groups", 1))))]


def _convt(m: nn.Module) -> list[tuple[str, LayerLayout]]:
    return [("weight", LayerLayout(1, 0, int(getattr(m, "groups", 1))))]


def _linear(m: nn.Module) -> list[tuple[str, LayerLayout]]:
    return [("weight", LayerLayout(0, 1))]


def _in_out(m: nn.Module) -> list[tuple[str, LayerLayout]]:
    return [("weight", LayerLayout(1, 0))]


def _mha(m: nn.Module) -> list[tuple[str, LayerLayout]]:
    names = ["in_proj_weight"] if getattr(m, "in_proj_weight", None) is not None else [
        "q_proj_weight", "k_proj_weight", "v_proj_weight"]
    return [(n, LayerLayout(0, 1)) for n in names if getattr(m, n, None) is not None]


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer_type(_t, _conv)
for _t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer_type(_t, _convt)
register_layer_type(nn.Linear, _linear)
register_layer_type(nn.MultiheadAttention, _mha)
register_layer_type(nn.Embedding, _in_out)
register_layer_type(nn.EmbeddingBag, _in_out)

# TorchScript modules lose their Python class; they keep its name.
_SCRIPT_NAMES: dict[str, _Reader] = {
    "Linear": _linear, "NonDynamicallyQuantizableLinear": _linear,
    "Conv1d": _conv, "Conv2d": _conv, "Conv3d": _conv,
    "ConvTranspose1d": _convt, "ConvTranspose2d": _convt, "ConvTranspose3d": _convt,
    "Embedding": _in_out, "MultiheadAttention": _mha,
}

_EMBEDDING_TYPES = ("Embedding", "EmbeddingBag")


def _is_hf_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 style): weight stored (in, out), duck typed."""
    w = getattr(m, "weight", None)
    nf = getattr(m, "nf", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and isinstance(nf, int) and w.shape[1] == nf)


#: Instance attribute through which a module can declare its prunable weights itself:
#: ``{param_name: LayerLayout}``; ``_sparsekit_type`` may name its kind for reports.
LAYOUTS_ATTR = "_sparsekit_layouts"
TYPE_ATTR = "_sparsekit_type"


def declare_layouts(module: nn.Module, layouts: dict[str, LayerLayout], type_name: str | None = None) -> None:
    """Declare the prunable weights of one module instance (overrides the type registry).

    Used for modules whose class says nothing about their weights, e.g. the containers of an
    ``ExportedProgram.module()``; an empty dict marks a module as having nothing to prune.
    """
    module.__dict__[LAYOUTS_ATTR] = dict(layouts)
    if type_name is not None:
        module.__dict__[TYPE_ATTR] = type_name


def _reader_for(m: nn.Module) -> _Reader | None:
    declared = m.__dict__.get(LAYOUTS_ATTR)
    if declared is not None:
        return lambda _m: list(declared.items())
    for cls in type(m).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    if _is_hf_conv1d(m):
        return _in_out
    if isinstance(m, torch.jit.ScriptModule):
        return _SCRIPT_NAMES.get(getattr(m, "original_name", ""))
    return None


def type_name(m: nn.Module) -> str:
    """The class name of a module as reports show it (TorchScript: the original class)."""
    return _type_name(m)


def _type_name(m: nn.Module) -> str:
    if TYPE_ATTR in m.__dict__:
        return m.__dict__[TYPE_ATTR]
    if isinstance(m, torch.jit.ScriptModule):
        return getattr(m, "original_name", type(m).__name__)
    return _unsharded_class(type(m)).__name__


def _unsharded_class(cls: type) -> type:
    """The user's class behind FSDP2's ``FSDP<Name>`` subclass (``fully_shard`` swaps ``__class__``)."""
    bases = cls.__bases__
    if len(bases) == 2 and bases[0].__name__ == "FSDPModule" and cls.__name__ == "FSDP" + bases[1].__name__:
        return bases[1]
    return cls


def default_filter(module: nn.Module, name: str) -> bool:
    """Select every supported layer except embeddings (paper: all conv and linear layers)."""
    return _type_name(module) not in _EMBEDDING_TYPES


def find_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> list[Layer]:
    """Prunable weights of ``model`` in module order.

    Args:
        model: any module; parameters may be on the meta device.
        filter_fn: ``(module, module_fqn) -> bool`` selecting layers; defaults to
            :func:`default_filter` (everything supported except embeddings).

    Raises:
        UnsupportedLayerError: a selected module of unknown type has a weight with 2+ dimensions.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    keep = filter_fn or default_filter
    # Canonical names: first occurrence in named_parameters() order.
    canonical: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), name)
    layers: dict[int, Layer] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        reader = _reader_for(m)
        if reader is None:
            w = dict(m.named_parameters(recurse=False)).get("weight")
            if isinstance(w, torch.Tensor) and w.dim() >= 2 and keep(m, mname) and id(w) not in layers:
                raise UnsupportedLayerError(
                    f"module {mname!r} of type {type(m).__name__} has a {w.dim()}-D weight but sparsekit "
                    "does not know which axes are its inputs and outputs; register it with "
                    "sparsekit.register_layer_type(MyModule, out_axis=..., in_axis=...) or exclude it "
                    "with filter_fn=lambda module, name: ...")
            continue
        entries = reader(m)
        if not entries or not keep(m, mname):
            continue
        for pname, layout in entries:
            p = getattr(m, pname, None)
            if not isinstance(p, torch.Tensor) or p.dim() < 2:
                continue
            fqn = f"{mname}.{pname}" if mname else pname
            prev = layers.get(id(p))
            if prev is not None:
                if fqn != prev.fqn and fqn not in prev.aliases:
                    prev.aliases = prev.aliases + (fqn,)
                continue
            check_layout(fqn, tuple(p.shape), layout)
            first = canonical.get(id(p), fqn)
            aliases = (fqn,) if first != fqn else ()
            layers[id(p)] = Layer(first, mname, _type_name(m), tuple(p.shape), layout, p, aliases)
    return list(layers.values())


def prunable_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> list[Layer]:
    """:func:`find_layers`, raising :class:`NoPrunableLayersError` when nothing is selected."""
    layers = find_layers(model, filter_fn)
    if not layers:
        raise NoPrunableLayersError(
            f"{type(model).__name__} has no prunable weights (Linear, ConvNd, ConvTransposeNd, "
            "MultiheadAttention, Conv1D) after filtering; check filter_fn or register your layer type "
            "with sparsekit.register_layer_type")
    return layers


def check_layout(fqn: str, shape: tuple[int, ...], lo: LayerLayout) -> None:
    """Raise :class:`UnsupportedLayerError` unless ``lo`` fits a weight of ``shape``."""
    nd = len(shape)
    if not (0 <= lo.out_axis < nd and 0 <= lo.in_axis < nd and lo.out_axis != lo.in_axis):
        raise UnsupportedLayerError(f"{fqn}: layout {lo} does not fit a weight of shape {shape}")
    if lo.groups < 1:
        raise UnsupportedLayerError(f"{fqn}: groups must be >= 1, got {lo.groups}")
    if lo.groups > 1:
        lead = min(lo.out_axis, lo.in_axis)
        if shape[lead] % lo.groups:
            raise UnsupportedLayerError(
                f"{fqn}: axis {lead} of a weight of shape {shape} cannot be split into {lo.groups} groups")


def select(layers: list[Layer], names: Iterable[str], what: str) -> set[str]:
    """fqns of ``layers`` matched by ``names`` (parameter fqn, module fqn or a regex fullmatch)."""
    chosen: set[str] = set()
    for pat in names:
        hits = {
            L.fqn for L in layers
            if pat in (L.fqn, L.module_fqn) or pat in L.aliases or _fullmatch(pat, L.fqn)
        }
        if not hits:
            raise ValueError(
                f"{what}: {pat!r} matches no prunable layer; give a parameter name (e.g. "
                f"{layers[0].fqn!r}), a module name or a regular expression")
        chosen |= hits
    return chosen


def _fullmatch(pat: str, text: str) -> bool:
    try:
        return re.fullmatch(pat, text) is not None
    except re.error:
        return False
