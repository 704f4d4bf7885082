"""``prune``: the path nn.Module -> layers -> densities -> sampling -> flow -> Ticket -> attach."""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Iterable

import torch
from torch import nn

from . import __version__
from ._registry import Method
from ._wrappers import unwrap
from .attach import _remember_ticket, attach, is_pruned
from .coverage import model_coverage
from .densities import (
    METHOD_DEFAULT,
    MethodDefault,
    default_density,
    densities_for_layers,
    split_inputs,
    validate_density,
)
from .errors import SparsekitError, UnsupportedLayerError
from .flow import FLOW_MODES, repair_flow
from .layers import FilterFn, check_parametrizations, prunable_layers, select
from .masks import CompactMask
from .rng import DEFAULT_CHUNK_WORDS, M64, RNG_ID
from .sampling import draw_mask
from .structures import Structure, draw_structured, nm_layer_densities, parse_structure
from .ticket import LayerRecord, Ticket, model_fingerprint

__all__ = ["prune", "validate_seed", "validate_flow"]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def validate_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= M64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return seed


def validate_flow(flow: object) -> str | None:
    if isinstance(flow, str) and flow.lower() == "none":
        return None
    if flow not in FLOW_MODES:
        raise ValueError(f"flow must be 'repair' (random addition), 'resample' (rejection sampling) or None, "
                         f"got {flow!r}")
    return flow  # type: ignore[return-value]


def _resolve_structure(structure: object, flow: str | None, exact: bool) -> Structure:
    """The structure to draw with; rejects combinations that are not defined."""
    st = parse_structure(structure)
    if st.is_element:
        return st
    if exact:
        raise ValueError(f"exact=True is defined for structure 'element' only; {st} masks are drawn per "
                         "block, per row or per group (fanin and N:M are exact per row by construction)")
    if flow == "resample":
        raise ValueError(f"flow='resample' is defined for structure 'element' only; use flow='repair' or None "
                         f"with structure {st}")
    return st


def prune(
    model: nn.Module,
    method: str | Method = "er-balanced",
    density: float | MethodDefault = METHOD_DEFAULT,
    *,
    seed: int = 0,
    flow: str | None = "repair",
    filter_fn: FilterFn | None = None,
    dense: Iterable[str] = (),
    exact: bool = False,
    device: torch.device | str | None = None,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    strict: bool = False,
    structure: str | tuple | Structure | None = None,
    **options: object,
) -> Ticket:
    """Put Erdős–Rényi masks on ``model`` in place and return the :class:`~sparsekit.Ticket`.

    Each masked weight ``l`` keeps every entry independently with probability ``p_l`` (paper §2,
    ``s_ij ~ Ber(p_l)``), where the layerwise densities ``p_l`` come from ``method`` (paper §3) and
    meet the global ``density``. Flow preservation (App. A.1) then makes sure every row and column
    keeps an edge. Masks are a pure function of ``(seed, fqn, shape, density, method, flow, exact)``
    and identical on every device.

    Args:
        model: any module; on the meta device the masks are drawn (on CPU) and reported but not
            attached.
        method: a registered method name (``sparsekit.list_methods()``; short names such as
            ``"pyramidal"`` work) or a :class:`~sparsekit.Method`.
        density: global fraction of kept weights in (0, 1]; 1 gives a no-op ticket. Default 0.01, or
            the method's own (er-from: the density of the source ticket).
        seed: seed of the counter RNG, an integer in [0, 2**64).
        flow: ``"repair"`` (random addition, default), ``"resample"`` (rejection sampling) or None.
        filter_fn: ``(module, module_fqn) -> bool`` choosing the layers (default: every supported
            layer except embeddings). Layers filtered out do not count towards the density.
        dense: names (parameter fqn, module fqn or regex) of layers kept at density 1; they count
            towards the global density.
        exact: keep exactly ``round(p_l * m_l)`` weights per layer instead of Bernoulli draws.
        device: where to draw masks (default: each weight's device; CPU for meta).
        chunk_words: RNG chunk size; results do not depend on it.
        strict: raise :class:`~sparsekit.UnsupportedLayerError` when a parameter with 2+ dimensions is
            covered by no rule (default: a warning naming them and their share of the parameters).
            ``ticket.report()`` shows the masked / dense / excluded / unknown fractions either way
            (:mod:`sparsekit.coverage`).
        structure: how each layer's mask is drawn at its density (:mod:`sparsekit.structures`):
            ``"element"`` (default, the paper's Bernoulli ER), ``"block4x4"`` / ``("block", (16, 16))``
            (ER over blocks, flow at block level), ``"fanin"`` (constant fan-in: every neuron keeps
            ``max(1, round(p_l * fan_in))`` random inputs) or ``"nm2:4"`` (random 2 of every 4 inputs;
            layers are 2:4 or dense, global density >= 0.5).
        **options: method options, e.g. ``redistribute=False`` for er-balanced, and method inputs:
            ``data=`` (a DataLoader or Dataset) for er-snip, ``ticket=`` (a Ticket or ticket file) for
            er-from. Inputs are used to compute the layerwise densities and are not recorded in the
            ticket; the model itself is passed to the methods that run it (er-snip, er-synflow).

    Returns:
        The ticket; ``ticket.report()`` gives the per-layer table with totals.
    """
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)  # torch.compile / DDP wrappers: the same names, so the same masks
    if not isinstance(density, MethodDefault):
        density = validate_density(density)
    seed = validate_seed(seed)
    flow = validate_flow(flow)
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    m, inputs = split_inputs(method, dict(options), model)
    st = _resolve_structure(structure, flow, exact)
    layers = prunable_layers(model, filter_fn)
    if is_pruned(model):
        raise SparsekitError("the model already carries sparsekit masks; call sparsekit.finalize(model) "
                             "first to prune it again")
    if isinstance(density, MethodDefault):
        density = validate_density(default_density(m, layers, inputs))
    dens = densities_for_layers(layers, m, density, dense, inputs=inputs)
    if st.kind == "nm":
        keep_dense = select(list(layers), dense, "dense") if dense else set()
        dens = nm_layer_densities({L.fqn: L.numel for L in layers}, dens, density, st, keep_dense)
    coverage = model_coverage(model, layers, dens)
    if coverage.unknown:
        if strict:
            raise UnsupportedLayerError(coverage.unknown_message())
        warnings.warn(coverage.unknown_message(), stacklevel=2)
    records: list[LayerRecord] = []
    masks: dict[str, CompactMask] = {}
    meta = False
    for L in layers:
        p = dens[L.fqn]
        meta = meta or L.param.is_meta
        if p >= 1.0:
            records.append(LayerRecord(L.fqn, L.module_type, L.shape, 1.0, L.numel, aliases=L.aliases,
                                       dtype=_dtype_name(L.param)))
            continue
        dev = torch.device(device) if device is not None else (
            torch.device("cpu") if L.param.is_meta else L.param.device)
        if st.is_element:
            mask = draw_mask(L.fqn, L.shape, p, seed, exact=exact, device=dev, chunk_words=chunk_words)
            rep = repair_flow(L, mask, p, seed, flow)
        else:
            mask, rep = draw_structured(L, p, seed, st, flow, device=dev, chunk_words=chunk_words)
            if rep.fallbacks:
                warnings.warn(f"{L.fqn}: {rep.fallbacks} input column(s) could only be revived by adding an edge, "
                              f"so this layer is no longer exactly {st} (the ticket report counts them as "
                              "fallbacks); use a higher density or flow=None", stacklevel=2)
        compact = masks[L.fqn] = CompactMask.from_bool(mask, consume=True, density_hint=p)
        del mask
        records.append(LayerRecord(
            L.fqn, L.module_type, L.shape, p, compact.nnz, rep.edges_added,
            rep.rows_repaired, rep.cols_repaired, rep.fallbacks, L.aliases, _dtype_name(L.param)))
    ticket = Ticket(m.name, density, seed, flow, exact, records, masks, dict(m.options),
                    rng=RNG_ID, sparsekit_version=__version__, layouts={L.fqn: L.layout for L in layers},
                    file_fingerprint=model_fingerprint(model), structure=str(st))
    ticket.coverage = coverage.summary()
    if meta:
        warnings.warn("the model is on the meta device: masks were drawn and reported but not attached; "
                      "materialise the model and call sparsekit.attach(model, ticket)", stacklevel=2)
    else:
        check_parametrizations(model, masks)
        attach(model, masks)
        ticket.model_ref = weakref.ref(model)
        _remember_ticket(model, ticket)
    ticket.elapsed_s = time.perf_counter() - t0
    return ticket
