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
``nn.LSTM/GRU/RNN``                 ``weight_ih/hh_l*`` (gates 0 (groups =  1
                                    * hidden, in)            gates)
                                    ``weight_hr_l*``         0            1
fused MoE experts (transformers)    ``(E, out, in)``         1 (stack 0)  2
                                    transposed ``(E, in,     2 (stack 0)  1
                                    out)``
MoE router (``num_experts`` attr)   ``weight`` (E, hidden)   0            1
==================================  =======================  ===========  =========

``nn.MultiheadAttention.out_proj`` is an ``nn.Linear`` and is found as such. Embeddings (by class
hierarchy, :func:`is_embedding`) and routers are found but excluded by the default filter; pass
``filter_fn=lambda module, name: True`` to include them. A Parameter shared by several modules (tied
weights) is one layer with one mask, named by its first fqn in module order; the other names are kept
as ``aliases``; if an embedding shares it, it is that embedding (see :func:`find_layers`). Weights
under ``torch.nn.utils.parametrize`` or old-style ``weight_norm`` are found under the tensor that
training updates. What happens to every other parameter is classified by :mod:`sparsekit.coverage`.

Other module types with a weight of two or more dimensions raise :class:`UnsupportedLayerError`
unless excluded by ``filter_fn``, registered with :func:`register_layer_type` (per class) or
declared with :func:`declare_layouts` (per instance).
"""

from __future__ import annotations

import math
import re
import warnings
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
    "declare_excluded",
    "default_filter",
    "is_embedding",
    "include_embeddings",
    "is_router",
    "check_parametrizations",
    "FilterFn",
]

FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class LayerLayout:
    """How to read a weight's axes: ``out_axis`` (rows), ``in_axis`` (columns), ``groups``, ``stack_axis``.

    All remaining axes are kernel axes. For grouped weights the grouped axis is the one of size
    ``channels / groups`` (the in axis for convolutions, the out axis for transposed ones); the other
    of the two axes is split into ``groups`` equal blocks. The same blocks describe weights that
    stack several matrices along their out axis with shared inputs, e.g. the four gates of an LSTM
    (``(4 * hidden, in)``, ``groups=4``): each block is then its own bipartite graph for flow repair.

    ``stack_axis`` marks a weight holding several independent matrices along one axis, e.g. the
    ``(experts, out, in)`` tensors of a mixture-of-experts layer: every index of that axis is its
    own ER graph with its own flow repair (it plays the role of the group, so ``groups`` must be 1).
    """

    out_axis: int = 0
    in_axis: int = 1
    groups: int = 1
    stack_axis: int | None = None


@dataclass
class Layer:
    """One prunable weight.

    Attributes:
        fqn: fully qualified parameter name, e.g. ``"features.0.weight"``. For a parametrized
            weight this is the tensor training updates (e.g.
            ``"conv.parametrizations.weight.original1"`` under ``weight_norm``).
        module_fqn: name of the owning module.
        module_type: class name of the owning module.
        shape: shape of the weight.
        layout: axes of the weight.
        param: the Parameter itself (may live on the meta device).
        aliases: further fqns under which the same Parameter is reachable (tied weights).
        parametrization: for a parametrized weight, ``"<kind>:<effective weight fqn>"`` where kind
            is ``weight_norm``, ``spectral_norm``, ``weight_norm (old-style)`` or ``custom``
            (zero preservation is checked before masks are attached); empty otherwise.
    """

    fqn: str
    module_fqn: str
    module_type: str
    shape: tuple[int, ...]
    layout: LayerLayout
    param: torch.Tensor = field(repr=False)
    aliases: tuple[str, ...] = ()
    parametrization: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def _lead_is_out(self) -> bool:
        return self.layout.out_axis < self.layout.in_axis

    def _perm(self) -> list[int]:
        lo = self.layout
        lead, second = (lo.out_axis, lo.in_axis) if self._lead_is_out else (lo.in_axis, lo.out_axis)
        return [lead, second] + [a for a in range(len(self.shape)) if a not in (lead, second, lo.stack_axis)]

    def grid(self) -> tuple[int, int, int, int]:
        """``(groups, rows per group, columns per group, kernel elements)`` of the weight.

        Of the out and in axes, the one that comes first in the weight is split into ``groups``
        blocks and the other already counts per group: Conv ``(out, in/g, k)``, ConvTranspose
        ``(in, out/g, k)``.
        """
        s = self.layout.stack_axis
        if s is not None:
            e, r, c = self.shape[s], self.shape[self.layout.out_axis], self.shape[self.layout.in_axis]
            return e, r, c, (self.numel // (e * r * c) if e * r * c else 0)
        g = self.layout.groups
        lead, second = (self.shape[a] for a in self._perm()[:2])
        k = self.numel // (lead * second) if lead * second else 0
        if self._lead_is_out:
            return g, lead // g, second, k
        return g, second, lead // g, k

    def as_grid(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (this layer's shape) as ``(groups, rows, cols, kernel)``; for reading only."""
        g, r, c, k = self.grid()
        if self.layout.stack_axis is not None:
            lo = self.layout
            return t.permute([lo.stack_axis, lo.out_axis, lo.in_axis] + self._perm()[2:]).reshape(g, r, c, k)
        v = t.permute(self._perm())
        if self._lead_is_out:
            return v.reshape(g, r, c, k)
        return v.reshape(g, c, r, k).transpose(1, 2)

    def flat_index(self, g: torch.Tensor, r: torch.Tensor, c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Flat (C-order) index into the weight of grid entries ``(g, r, c, k)``."""
        G, R, C, K = self.grid()
        perm = self._perm()
        strides = [math.prod(self.shape[a + 1:]) for a in range(len(self.shape))]
        if self.layout.stack_axis is not None:
            lo = self.layout
            flat = g * strides[lo.stack_axis] + r * strides[lo.out_axis] + c * strides[lo.in_axis]
        else:
            if self._lead_is_out:
                lead, second = g * R + r, c
            else:
                lead, second = g * C + c, r
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


_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn(m: nn.Module) -> list[tuple[str, LayerLayout]]:
    """``nn.LSTM/GRU/RNN``: every layer and direction; the gate blocks of ``weight_ih``/``weight_hh``
    (LSTM i,f,g,o; GRU r,z,n) are stacked along the out axis and read as groups, so flow repair
    keeps every gate unit and every input connected within each gate. ``weight_hr`` (``proj_size``)
    is a plain (proj, hidden) matrix."""
    gates = _RNN_GATES.get(str(getattr(m, "mode", "")), 1)
    out = []
    for name, p in m.named_parameters(recurse=False):
        if p.dim() < 2:
            continue
        if name.startswith(("weight_ih_l", "weight_hh_l")):
            out.append((name, LayerLayout(0, 1, gates)))
        elif name.startswith("weight_hr_l"):
            out.append((name, LayerLayout(0, 1)))
    return out


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer_type(_t, _conv)
for _t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer_type(_t, _convt)
register_layer_type(nn.Linear, _linear)
register_layer_type(nn.MultiheadAttention, _mha)
register_layer_type(nn.Embedding, _in_out)
register_layer_type(nn.EmbeddingBag, _in_out)
register_layer_type(nn.RNNBase, _rnn)

# TorchScript modules lose their Python class; they keep its name.
_SCRIPT_NAMES: dict[str, _Reader] = {
    "Linear": _linear, "NonDynamicallyQuantizableLinear": _linear,
    "Conv1d": _conv, "Conv2d": _conv, "Conv3d": _conv,
    "ConvTranspose1d": _convt, "ConvTranspose2d": _convt, "ConvTranspose3d": _convt,
    "Embedding": _in_out, "EmbeddingBag": _in_out, "MultiheadAttention": _mha,
}

#: TorchScript class names that count as embeddings (a ScriptModule has no Python class to test).
_EMBEDDING_SCRIPT_NAMES = ("Embedding", "EmbeddingBag")


def is_embedding(m: nn.Module) -> bool:
    """Whether ``m`` is an embedding: an instance of ``nn.Embedding``/``nn.EmbeddingBag`` or of a
    subclass (scaled word embeddings, learned positional embeddings, ...), or a TorchScript module
    compiled from one (matched by its original class name)."""
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return True
    return isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", "") in _EMBEDDING_SCRIPT_NAMES


_EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")


def _expert_count(m: nn.Module) -> int | None:
    for a in _EXPERT_COUNT_ATTRS:
        v = m.__dict__.get(a)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _fused_experts(m: nn.Module) -> list[tuple[str, LayerLayout]] | None:
    """transformers' fused mixture-of-experts containers (Mixtral, Qwen-MoE, DeepSeek, GPT-OSS, ...),
    recognised by structure: an expert count attribute, the ``is_transposed`` flag set by
    ``transformers.integrations.use_experts_implementation``, and 3-D parameters ``(E, out, in)``
    (``(E, in, out)`` when transposed) whose first axis is the expert count."""
    e = _expert_count(m)
    transposed = m.__dict__.get("is_transposed")
    if e is None or not isinstance(transposed, bool):
        return None
    lay = LayerLayout(2, 1, stack_axis=0) if transposed else LayerLayout(1, 2, stack_axis=0)
    out = [(n, lay) for n, p in m.named_parameters(recurse=False) if p.dim() == 3 and p.shape[0] == e]
    return out or None


def is_router(m: nn.Module) -> bool:
    """A mixture-of-experts router by structure: an expert count attribute ``E`` and a 2-D
    ``weight`` of shape ``(E, hidden)`` (Mixtral/Qwen-MoE ``TopKRouter`` style)."""
    e = _expert_count(m)
    w = m._parameters.get("weight") if e is not None else None
    return isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == e


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

    Used for modules whose class says nothing about their weights: the containers of an
    ``ExportedProgram.module()``, or parameters holding several matrices, e.g. an expert tensor
    of shape ``(E, out, in)``: ``declare_layouts(moe, {"w1": LayerLayout(1, 2, stack_axis=0)})``
    makes each expert its own ER graph with its own flow repair. An empty dict marks a module as
    having nothing to prune.
    """
    if not isinstance(layouts, dict) or not all(isinstance(v, LayerLayout) for v in layouts.values()):
        raise TypeError("layouts must be a dict {parameter name: sparsekit.LayerLayout}")
    module.__dict__[LAYOUTS_ATTR] = dict(layouts)
    if type_name is not None:
        module.__dict__[TYPE_ATTR] = type_name


#: Instance attribute listing parameters a user keeps dense on purpose: ``{param_name: reason}``.
EXCLUDED_ATTR = "_sparsekit_excluded"


def declare_excluded(module: nn.Module, reasons: dict[str, str]) -> None:
    """Declare parameters of ``module`` that stay dense on purpose, with the reason shown in reports.

    Coverage reports them as ``excluded`` (rule ``declared: <reason>``) instead of ``unknown``, so
    ``prune`` no longer warns about them and ``strict=True`` accepts them.

    Example:
        >>> sparsekit.declare_excluded(model.head, {"prototypes": "class prototypes, not a layer"})
    """
    if not isinstance(reasons, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in reasons.items()):
        raise TypeError("reasons must be a dict {parameter name: reason string}")
    own = dict(module.named_parameters(recurse=False))
    missing = [k for k in reasons if k not in own]
    if missing:
        raise ValueError(f"{type(module).__name__} has no parameters {missing}; its parameters: {sorted(own)}")
    module.__dict__.setdefault(EXCLUDED_ATTR, {}).update(reasons)


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
    experts = _fused_experts(m)
    if experts is not None:
        return lambda _m: experts
    if is_router(m):
        return _linear
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
    """Select every supported layer except embeddings and mixture-of-experts routers.

    The paper masks all conv and linear layers (§2-§3); embeddings are lookup tables, not layers
    of the network's graph, and are excluded, including a projection whose weight *is* an
    embedding's (tied output heads, see :func:`find_layers`). Routers are excluded because a
    sparse router changes which experts run rather than how they compute; include them with a
    ``filter_fn`` of your own.
    """
    return not is_embedding(module) and not is_router(module)


def include_embeddings(module: nn.Module, name: str) -> bool:
    """A ``filter_fn``: what :func:`default_filter` selects plus embeddings, and with them the output
    heads tied to them (``prune(model, filter_fn=sparsekit.layers.include_embeddings)``; CLI
    ``--include-embeddings``)."""
    return default_filter(module, name) or is_embedding(module)


# ---------------------------------------------------------------------------------------------
# Parametrized weights (torch.nn.utils.parametrize, old-style weight_norm)

def _old_weight_norm(m: nn.Module, pname: str) -> bool:
    from torch.nn.utils.weight_norm import WeightNorm

    return (pname not in m._parameters and f"{pname}_v" in m._parameters and f"{pname}_g" in m._parameters
            and any(isinstance(h, WeightNorm) and h.name == pname for h in m._forward_pre_hooks.values()))


def _parametrized_target(m: nn.Module, mname: str, pname: str) -> tuple[str, torch.Tensor, str] | None:
    """``(fqn, tensor, kind)`` of the tensor training updates for a parametrized weight, else None.

    weight_norm (new and old style) masks ``v`` (``original1`` / ``weight_v``): the effective
    weight ``g * v / ||v||`` is zero exactly where ``v`` is. spectral_norm masks ``original``:
    ``W / sigma`` keeps its zeros. A user parametrization with a single ``original`` of the
    weight's shape masks ``original``; whether it keeps zeros is checked before masks are attached
    (:func:`check_parametrizations`).
    """
    from torch.nn.utils import parametrize

    prefix = f"{mname}." if mname else ""
    if _old_weight_norm(m, pname):
        return f"{prefix}{pname}_v", m._parameters[f"{pname}_v"], "weight_norm (old-style)"
    if not parametrize.is_parametrized(m, pname):
        return None
    plist = m.parametrizations[pname]
    kinds = [type(f).__name__ for f in plist]
    base = f"{prefix}parametrizations.{pname}"
    where = f"{prefix}{pname}"
    if kinds == ["_WeightNorm"] and hasattr(plist, "original1"):
        return f"{base}.original1", plist.original1, "weight_norm"
    if hasattr(plist, "original"):
        orig = plist.original
        kind = "spectral_norm" if kinds == ["_SpectralNorm"] else "custom"
        return f"{base}.original", orig, kind
    raise UnsupportedLayerError(
        f"{where} is parametrized by {kinds} with several original tensors; sparsekit cannot tell which "
        "one to mask so that the effective weight keeps the mask's zeros; remove the parametrization "
        f"(torch.nn.utils.parametrize.remove_parametrizations(module, {pname!r})) before pruning or "
        "exclude the layer with filter_fn")


#: parametrizations known to keep the zeros of the tensor they are applied to
_ZERO_PRESERVING = {"_WeightNorm", "_SpectralNorm"}


@torch.no_grad()
def check_parametrizations(model: nn.Module, masks: dict) -> None:
    """Refuse masks on parametrized weights whose effective weight would not keep the mask's zeros.

    For every mask ``{fqn: bool tensor or CompactMask}`` on the ``original`` of a parametrization
    other than weight_norm/spectral_norm, the parametrization chain runs on a masked copy of the
    original; the model is not modified. Raises :class:`UnsupportedLayerError` naming the weight
    and what to do.
    """
    from torch.nn.utils import parametrize

    for mname, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule) or not parametrize.is_parametrized(m):
            continue
        for pname, plist in m.parametrizations.items():
            prefix = f"{mname}." if mname else ""
            fqn = f"{prefix}parametrizations.{pname}.original"
            kinds = [type(f).__name__ for f in plist]
            if fqn not in masks or set(kinds) <= _ZERO_PRESERVING or plist.original.is_meta:
                continue
            keep = masks[fqn].bool().to(plist.original.device)  # CompactMask or bool tensor
            x = plist.original.detach().clone().masked_fill_(~keep, 0)
            for f in plist:
                x = f(x)
            if tuple(x.shape) != tuple(keep.shape) or bool((x.masked_select(~keep) != 0).any()):
                raise UnsupportedLayerError(
                    f"{prefix}{pname} is parametrized by {kinds}, which does not keep the zeros of its input, so a "
                    "mask on the trained tensor would not make the weight sparse; remove the parametrization "
                    f"(torch.nn.utils.parametrize.remove_parametrizations(module, {pname!r})) before pruning or "
                    "exclude the layer with filter_fn")


def find_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> list[Layer]:
    """Prunable weights of ``model`` in module order.

    Tied weights: a Parameter reachable from several modules is one layer with one mask. If one of
    its owners is an embedding (:func:`is_embedding`), the Parameter *is* an embedding: it is
    selected only when ``filter_fn`` selects that embedding module, whatever the other owners
    (a tied ``lm_head``); by default it is therefore excluded. To prune a tied head, select the
    embedding too, e.g. ``filter_fn=lambda module, name: True``.

    Parametrized weights are reported under the tensor that training updates (see
    :func:`_parametrized_target`), so enforcement, tickets, export and ``finalize`` all act on it.

    Args:
        model: any module; parameters may be on the meta device.
        filter_fn: ``(module, module_fqn) -> bool`` selecting layers; defaults to
            :func:`default_filter` (everything supported except embeddings and routers).

    Raises:
        UnsupportedLayerError: a selected module of unknown type has a weight with 2+ dimensions, or
            a parametrization cannot be masked.
    """
    from ._wrappers import unwrap

    model = unwrap(model)  # torch.compile / DDP wrappers name weights like the module inside
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inner = [n for n, m in model.named_modules() if n and unwrap(m) is not m]
    if inner:  # only the root is unwrapped: names (which key the masks) keep a submodule wrapper's prefix
        warnings.warn(f"submodule(s) {inner[:3]} are wrapped by torch.compile/DistributedDataParallel/DataParallel: "
                      "their weights are named with the wrapper's '_orig_mod.'/'module.' part, so masks and ticket "
                      "names differ from the unwrapped model's; prune before wrapping submodules, or wrap the whole "
                      "model", stacklevel=3)
    keep = filter_fn or default_filter
    # Canonical names: first occurrence in named_parameters() order.
    canonical: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), name)
    tied = _embedding_owners(model)
    tied_keep = {pid: any(keep(m, n) for m, n in owners) for pid, owners in tied.items()}
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
            target = _parametrized_target(m, mname, pname)
            if target is not None:
                fqn, p, kind = target
                how = f"{kind}:{mname + '.' if mname else ''}{pname}"
            else:
                p = getattr(m, pname, None)
                fqn, how = (f"{mname}.{pname}" if mname else pname), ""
            if not isinstance(p, torch.Tensor) or p.dim() < 2:
                continue
            if id(p) in tied and not tied_keep[id(p)]:
                continue  # an embedding's weight reached through a tied projection: excluded with it
            prev = layers.get(id(p))
            if prev is not None:
                if fqn != prev.fqn and fqn not in prev.aliases:
                    prev.aliases = prev.aliases + (fqn,)
                continue
            mtype = _type_name(m)
            if id(p) in tied:  # an embedding, whichever owner comes first: its type and its (num, dim) layout
                mtype, layout = _type_name(tied[id(p)][0][0]), LayerLayout(1, 0)
            check_layout(fqn, tuple(p.shape), layout)
            first = canonical.get(id(p), fqn)
            aliases = (fqn,) if first != fqn else ()
            layers[id(p)] = Layer(first, mname, mtype, tuple(p.shape), layout, p, aliases, how)
    return list(layers.values())


def _embedding_owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``{id(param): [(embedding module, module fqn), ...]}`` for parameters owned by embeddings."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        if is_embedding(m):
            for _n, p in m.named_parameters(recurse=False):
                out.setdefault(id(p), []).append((m, mname))
    return out


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
    if lo.stack_axis is not None:
        if not 0 <= lo.stack_axis < nd or lo.stack_axis in (lo.out_axis, lo.in_axis):
            raise UnsupportedLayerError(
                f"{fqn}: stack_axis {lo.stack_axis} must be an axis of the weight of shape {shape} other "
                "than its out and in axes")
        if lo.groups != 1:
            raise UnsupportedLayerError(f"{fqn}: a layout with a stack_axis must have groups=1, got {lo.groups}")
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
