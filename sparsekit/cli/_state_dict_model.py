"""A model rebuilt from a plain state_dict, without its architecture.

Erdős–Rényi masks need only each weight's shape and which axes are its outputs, inputs and groups
(paper §2, App. A.1), so ``sparsekit prune model.pt`` works on ``torch.save(model.state_dict())``
without ``--arch`` whenever the layer kinds can be read from the tensors and their names:

* a 2-D ``*.weight`` (or ``in_proj_weight``/``q_proj_weight``/... of attention) is Linear-like
  ``(out, in)``; under a name such as ``embed``, ``embedding``, ``wte`` or ``wpe`` it is an
  embedding ``(num, dim)``, which the default filter leaves dense as it does for ``nn.Embedding``;
* a 3-, 4- or 5-D ``*.weight`` is a convolution ``(out, in/groups, *kernel)``, or a transposed one
  ``(in, out/groups, *kernel)`` under a name such as ``deconv``, ``conv_transpose`` or ``upconv``;
* groups: the input channels of a convolution are taken to be the outputs of the weight before it
  (in state_dict order). A weight with one input channel per group after a layer with as many
  outputs as it has is depthwise (``groups = channels``); a weight whose input channels match the
  previous outputs, the first convolution, and a residual projection (a name with ``downsample``,
  ``shortcut``, ``skip`` or ``proj``) have one group. Anything else (grouped convolutions such as
  ResNeXt's, parallel branches such as Inception's) is ambiguous and refused with an error naming
  the weight: give ``--arch`` then.

Tensors with fewer than 2 dimensions (biases, normalisation) and other tensors (buffers, position
embeddings, class tokens) are kept as they are and not pruned, as they would not be with ``--arch``.
Weights stored transposed ``(in, out)`` (transformers' GPT-2 ``Conv1D``) cannot be told from Linear
by their shape: they are read as Linear, which changes which mask a seed draws (not its density);
give ``--arch`` to prune them as the model defines them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sparsekit.errors import SparsekitError
from sparsekit.layers import LayerLayout, declare_layouts

__all__ = ["model_from_state_dict", "classify_weights", "SOURCE_ATTR"]

SOURCE_ATTR = "_sparsekit_state_dict_source"
"""Attribute (in ``module.__dict__``) of a model loaded from a state_dict file: ``(container, key, prefix)``,
how the file held the state_dict, so a pruned state_dict can be written back in the same form."""

_EMBEDDING = re.compile(r"(^|[._])(embed\w*|embeddings?|wte|wpe|tok_emb\w*|pos_emb\w*|word_embeddings)$", re.I)
_TRANSPOSED = re.compile(r"(deconv|conv_?transpose|convt|upconv|up_conv)", re.I)
_RESIDUAL = re.compile(r"(downsample|shortcut|skip|proj)", re.I)
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _fix(key: str, message: str) -> SparsekitError:
    return SparsekitError(f"state_dict weight {key!r}: {message}; pass --arch SPEC (the model's builder) to "
                          "prune this file")


def classify_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, LayerLayout]]:
    """``{key: (type name, layout)}`` of the prunable weights of ``state_dict``, read from shapes and names.

    Raises:
        SparsekitError: a convolution's groups are ambiguous (see the module docstring).
    """
    out: dict[str, tuple[str, LayerLayout]] = {}
    prev_out: int | None = None  # outputs of the last Linear/conv weight seen
    for key, t in state_dict.items():
        owner, _, pname = key.rpartition(".")
        if t.dim() < 2 or not (pname == "weight" or pname in _ATTENTION_WEIGHTS):
            continue
        if t.dim() == 2:
            if pname == "weight" and _EMBEDDING.search(owner or pname):
                out[key] = ("Embedding", LayerLayout(1, 0))
                continue
            out[key] = ("Linear", LayerLayout(0, 1))
            prev_out = int(t.shape[0])
            continue
        if t.dim() > 5:
            raise _fix(key, f"a {t.dim()}-D weight is no Linear or convolution")
        nd = t.dim() - 2
        if _TRANSPOSED.search(owner):
            groups = _groups(key, in_channels=int(t.shape[0]), per_group=int(t.shape[1]), prev_out=prev_out,
                             other=None, owner=owner)
            out[key] = (f"ConvTranspose{nd}d", LayerLayout(1, 0, groups))
            prev_out = int(t.shape[1]) * groups
            continue
        groups = _groups(key, in_channels=prev_out, per_group=int(t.shape[1]), prev_out=prev_out,
                         other=int(t.shape[0]), owner=owner)
        out[key] = (f"Conv{nd}d", LayerLayout(0, 1, groups))
        prev_out = int(t.shape[0])
    return out


def _groups(key: str, *, in_channels: int | None, per_group: int, prev_out: int | None, other: int | None,
            owner: str) -> int:
    """Groups of a convolution from the outputs of the layer before (see the module docstring)."""
    if other is None:  # transposed: (in, out/groups, k); the in axis is whole
        if prev_out is None or prev_out == in_channels:
            return 1
        raise _fix(key, f"a transposed convolution with {in_channels} input channels after a layer with "
                        f"{prev_out} outputs: cannot tell its groups")
    if prev_out is None or prev_out == per_group or _RESIDUAL.search(owner):
        return 1
    if per_group == 1 and prev_out == other:
        return other  # depthwise
    shape = f"{other} outputs, {per_group} input channel{'s' if per_group != 1 else ''} per group"
    if prev_out % per_group == 0 and other % (prev_out // per_group) == 0:
        why = (f"a convolution ({shape}) after a layer with {prev_out} outputs: grouped ({prev_out // per_group} "
               "groups) or on another branch, the shapes cannot tell")
    else:
        why = (f"a convolution ({shape}) after a layer with {prev_out} outputs: its input is not the previous "
               "layer's output (a branch), so its groups cannot be read")
    raise _fix(key, why)


class _Node(nn.Module):
    """A plain container holding some of the state_dict's tensors."""


def model_from_state_dict(state_dict: Mapping[str, torch.Tensor], path: Path | str = "state_dict") -> nn.Module:
    """A module whose ``state_dict()`` is ``state_dict`` (same keys, the same tensors) and whose prunable
    weights are declared from their shapes and names (:func:`classify_weights`).

    Floating-point tensors become parameters (sharing storage between keys is kept: tied weights are one
    parameter), the others buffers.

    Raises:
        SparsekitError: a key cannot be a module path, or a weight's kind is ambiguous.
    """
    layers = classify_weights(state_dict)
    root = _Node()
    shared: dict[tuple[int, int, tuple[int, ...], torch.dtype], nn.Parameter] = {}
    declared: dict[str, dict[str, LayerLayout]] = {}
    types: dict[str, str] = {}
    for key, t in state_dict.items():
        parts = key.split(".")
        if any(not p for p in parts):
            raise SparsekitError(f"{path}: state_dict key {key!r} is not a module path; pass --arch SPEC")
        node: nn.Module = root
        for part in parts[:-1]:
            child = node._modules.get(part)
            if child is None:
                if hasattr(node, part):
                    raise SparsekitError(f"{path}: state_dict key {key!r} clashes with another key; pass --arch SPEC")
                child = _Node()
                node.add_module(part, child)
            node = child
        name = parts[-1]
        if name in node._modules or name in node._parameters or name in node._buffers:
            raise SparsekitError(f"{path}: state_dict key {key!r} clashes with another key; pass --arch SPEC")
        if t.is_floating_point() or t.is_complex():
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
            param = shared.get(ident) if ident is not None else None
            if param is None:
                param = nn.Parameter(t, requires_grad=t.is_floating_point())
                if ident is not None:
                    shared[ident] = param
            node.register_parameter(name, param)
        else:
            node.register_buffer(name, t)
        if key in layers:
            owner = ".".join(parts[:-1])
            declared.setdefault(owner, {})[name] = layers[key][1]
            types[owner] = layers[key][0]
    for owner, layouts in declared.items():
        declare_layouts(root.get_submodule(owner), layouts, types[owner])
    for mname, m in root.named_modules():
        if mname not in declared and isinstance(m._parameters.get("weight"), torch.Tensor):
            declare_layouts(m, {})  # a weight with under 2 dimensions or not a layer: nothing to prune
    return root
