"""ER randomisations of learned layerwise densities: methods ``er-snip``, ``er-synflow``, ``er-from``.

The paper challenges pruning algorithms with Erdős–Rényi masks that take only their *layerwise
densities* (§3 "Layerwise Sparsity Ratios", Tables 2-3 and 7-10: "Snip (ER)", "Synflow (ER)",
"IMP (ER)"; Su et al. 2020, Ma et al. 2021): the pruner decides how many weights each layer keeps,
then a fresh random mask with those densities is drawn and flow-repaired as usual by
:func:`sparsekit.prune`.

These are ordinary density schemes, ``(layers, density, **options) -> {fqn: p_l}``, that declare
*inputs* (see :func:`sparsekit.register_method`): ``prune`` passes the model to er-snip and
er-synflow, and the caller gives ``data=`` (er-snip) or ``ticket=`` (er-from)::

    sparsekit.prune(model, "er-snip", 0.01, data=loader)
    sparsekit.prune(model, "er-synflow", 0.01, input_shape=(3, 32, 32))
    sparsekit.prune(model, "er-from", ticket="imp.safetensors")   # density: the source ticket's

Inputs are not recorded in the ticket (an ER ticket stores its per-layer densities and seed, which
rebuild the masks). A layer the pruner removed completely (layer collapse) gets density ``1/m_l``
(one expected weight) with a warning, and flow repair connects it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ._registry import register_method
from .errors import SparsekitError
from .layers import Layer
from .pruners import global_topk, snip_scores, synflow_masks, warn_collapse
from .ticket import LayerRecord, Ticket

__all__ = ["er_snip", "er_synflow", "er_from", "source_densities"]


def _from_counts(layers: Sequence[Layer], kept: Mapping[str, int], what: str) -> dict[str, float]:
    """``p_l = kept_l / m_l``; collapsed layers get ``1 / m_l``."""
    collapsed = [L.fqn for L in layers if kept[L.fqn] == 0]
    warn_collapse(what, collapsed, "; their ER density is set to 1/m_l and flow repair connects them")
    return {L.fqn: max(kept[L.fqn], 1) / L.numel for L in layers}


@register_method("er-snip", description="ER mask with SNIP's layerwise densities (|g*w| on data=...; paper §3)",
                 aliases=("snip",), inputs=("model", "data"))
def er_snip(layers: Sequence[Layer], density: float, *, model: nn.Module, data: Any, batches: int = 1,
            batch_size: int = 128) -> dict[str, float]:
    """SNIP's per-layer densities at ``density`` (paper §3, "Snip (ER)" in Tables 2-3).

    Args:
        model: the network (an input, passed by ``prune``).
        data: an input: a DataLoader, Dataset or ``(inputs, targets)`` pair (see :func:`sparsekit.snip_scores`).
        batches: batches the gradient sums over.
        batch_size: batch size for a Dataset.
    """
    scores = snip_scores(model, data, batches=batches, batch_size=batch_size, layers=layers)
    masks = global_topk(scores, round(density * sum(L.numel for L in layers)))
    return _from_counts(layers, {f: int(m.sum()) for f, m in masks.items()}, "snip")


@register_method("er-synflow", description="ER mask with iterative SynFlow's layerwise densities (data-free; paper §3)",
                 aliases=("synflow",), inputs=("model",))
def er_synflow(layers: Sequence[Layer], density: float, *, model: nn.Module, iterations: int = 100,
               input_shape: Sequence[int] | None = None) -> dict[str, float]:
    """Iterative SynFlow's per-layer densities at ``density`` (paper §3, "Synflow (ER)" in Tables 2-3).

    Args:
        model: the network (an input, passed by ``prune``).
        iterations: SynFlow pruning steps with the exponential schedule.
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``; inferred when the first layer is Linear.
    """
    masks = synflow_masks(model, layers, density, iterations, input_shape)
    return _from_counts(layers, {f: int(m.sum()) for f, m in masks.items()}, "synflow")


def _records(ticket: Any) -> tuple[str, list[LayerRecord]]:
    if isinstance(ticket, Ticket):
        return ticket.kind, ticket.layers
    if isinstance(ticket, (str, os.PathLike)):
        from .formats.ticket_file import read_ticket_metadata

        header = read_ticket_metadata(ticket)  # no masks are rebuilt: the records are all er-from needs
        return header.kind, header.records
    raise TypeError(f"ticket must be a sparsekit.Ticket or the path of a ticket file, got {type(ticket).__name__}")


def source_densities(layers: Sequence[Layer], ticket: Any) -> dict[str, float]:
    """The source ticket's density for each of ``layers``: the ER density ``p_l`` of an ``er`` ticket,
    the realised density (kept / size) of a learned one.

    Raises:
        SparsekitError: a layer is missing from the ticket or has another shape there.
    """
    kind, records = _records(ticket)
    by_name: dict[str, LayerRecord] = {}
    for r in records:
        for name in (r.fqn, *r.aliases):
            by_name[name] = r
    out = {}
    for L in layers:
        r = next((by_name[n] for n in (L.fqn, *L.aliases) if n in by_name), None)
        if r is None:
            raise SparsekitError(f"the source ticket has no layer {L.fqn!r} (its layers: "
                                 f"{[x.fqn for x in records][:4]}...); er-from needs a ticket of the same model and "
                                 "layers (use the same filter_fn / --exclude as for the source)")
        if tuple(r.shape) != tuple(L.shape):
            raise SparsekitError(f"layer {L.fqn!r} has shape {tuple(L.shape)} but {tuple(r.shape)} in the source "
                                 "ticket; er-from needs a ticket of the same model")
        out[L.fqn] = r.target_density if kind == "er" else r.realised_density
    return out


def _source_density(layers: Sequence[Layer], *, ticket: Any) -> float:
    src = source_densities(layers, ticket)
    total = sum(L.numel for L in layers)
    return sum(src[L.fqn] * L.numel for L in layers) / total if total else 1.0


def _rescale(layers: Sequence[Layer], src: Mapping[str, float], density: float) -> dict[str, float]:
    """``p_l = min(1, c * s_l)`` with ``c`` solved so that the global density is ``density``."""
    capped: set[str] = set()
    while True:
        budget = density * sum(L.numel for L in layers) - sum(L.numel for L in layers if L.fqn in capped)
        mass = sum(src[L.fqn] * L.numel for L in layers if L.fqn not in capped)
        if mass <= 0 or budget <= 0:
            return {L.fqn: 1.0 if L.fqn in capped else src[L.fqn] for L in layers}
        c = budget / mass
        over = {L.fqn for L in layers if L.fqn not in capped and c * src[L.fqn] > 1.0}
        if not over:
            return {L.fqn: 1.0 if L.fqn in capped else c * src[L.fqn] for L in layers}
        capped |= over


@register_method("er-from", description="ER mask with the layerwise densities of ticket=... (e.g. IMP's; paper §3)",
                 aliases=("from",), inputs=("ticket",), default_density=_source_density)
def er_from(layers: Sequence[Layer], density: float, *, ticket: Any) -> dict[str, float]:
    """The per-layer densities of a source ticket (paper §3, "IMP (ER)" in Tables 2-3 with an IMP ticket).

    Without a ``density`` (``prune(model, "er-from", ticket=...)``) the source's densities are used as
    they are. With another global density they are scaled by a common factor (capped at 1, the
    excess shared among the other layers) to meet it.

    Args:
        ticket: an input: a :class:`~sparsekit.Ticket` or the path of a ticket file of the same model.
    """
    src = source_densities(layers, ticket)
    total = sum(L.numel for L in layers)
    current = sum(src[L.fqn] * L.numel for L in layers) / total
    dens = dict(src) if math.isclose(current, density, rel_tol=1e-9) else _rescale(layers, src, density)
    collapsed = [L.fqn for L in layers if dens[L.fqn] <= 0]
    warn_collapse("the source ticket", collapsed, "; their ER density is set to 1/m_l and flow repair connects them")
    return {L.fqn: dens[L.fqn] if dens[L.fqn] > 0 else 1 / L.numel for L in layers}
