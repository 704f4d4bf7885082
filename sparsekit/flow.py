"""Flow preservation (paper App. A.1): every neuron/filter keeps in- and out-degree >= 1.

The degree notion is local to each weight, as in the paper's code: viewing a weight as
``(groups, rows, cols, kernel)`` (see :meth:`sparsekit.layers.Layer.grid`), every row (output
neuron / filter) and every column (input neuron / channel, within its group for grouped convs) must
keep at least one edge; for convolutions a channel is connected if any kernel element is kept.

Two repairs, both deterministic from the seed through the counter RNG:

* ``"repair"`` (random addition): a dead row gets one edge to a uniformly random (column, kernel
  element) of its group; then every column still dead gets one edge to a uniformly random
  (row, kernel element). Rows go first, so an added row edge may also revive a column.
* ``"resample"`` (rejection sampling): the entries of a dead row are redrawn from Bernoulli(p_l)
  with fresh randomness, round after round, until at least one is kept; then the same for dead
  columns. A unit still dead after :data:`MAX_RESAMPLE_ROUNDS` rounds (expected only when
  ``p_l * entries << 1e-3``) gets one edge by random addition and is counted in ``fallbacks``.

Repairs only add edges, so the realised density can exceed the target by the edges added. The
report (:meth:`sparsekit.Ticket.report`) gives both counts: ``edges_added`` (edges per layer and in
total) and ``num_corrected``, the number of (layer, direction) pairs that needed a repair, each layer
counting at most once for its rows and once for its columns. The paper's Tables 5 and 6 report
``num_corrected`` (the authors' code adds ``(degrees == 0).any()`` per layer and direction), not the
number of edges added, although their captions say "edges"; ``edges_added`` is at least as large.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import rng
from .layers import Layer

__all__ = ["Repair", "repair_flow", "dead_units", "FLOW_MODES", "MAX_RESAMPLE_ROUNDS"]

FLOW_MODES = ("repair", "resample", None)
MAX_RESAMPLE_ROUNDS = 1024
_RESAMPLE_BLOCK_ELEMS = 1 << 22


@dataclass
class Repair:
    """What flow repair did to one weight."""

    edges_added: int = 0
    rows_repaired: int = 0
    cols_repaired: int = 0
    fallbacks: int = 0


def _alive(layer: Layer, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row_alive (G, R), col_alive (G, C))``: does each unit keep at least one edge."""
    grid = layer.as_grid(mask.view(torch.uint8))  # amax on bytes is ~20x faster than any() on bool
    return grid.amax(dim=(2, 3)).bool(), grid.amax(dim=(1, 3)).bool()


def dead_units(layer: Layer, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dead rows, dead cols)`` as ``(n, 2)`` tensors of ``(group, index)`` pairs."""
    row_alive, col_alive = _alive(layer, mask)
    return (~row_alive).nonzero(), (~col_alive).nonzero()


def repair_flow(layer: Layer, mask: torch.Tensor, p: float, seed: int, mode: str | None = "repair") -> Repair:
    """Make every row and column of ``mask`` (shape of ``layer``) keep an edge; in place.

    Args:
        layer: the weight's description (axes, groups).
        mask: contiguous boolean mask of the weight's shape.
        p: the layer's target density (used by ``"resample"``).
        seed: the ticket's seed; repairs draw from streams ``"flow-row"``, ``"flow-col"`` and
            ``"flow-resample-{row|col}/{round}"`` of the counter RNG.
        mode: ``"repair"`` (random addition), ``"resample"`` (rejection sampling) or None.
    """
    if mode not in FLOW_MODES:
        raise ValueError(f"flow must be one of 'repair', 'resample' or None, got {mode!r}")
    rep = Repair()
    if mode is None or mask.numel() == 0:
        return rep
    flat = mask.view(-1)
    row_alive, col_alive = _alive(layer, mask)
    for direction in ("row", "col"):
        alive = row_alive if direction == "row" else col_alive
        dead = (~alive).nonzero()
        if dead.numel() == 0:
            continue
        if direction == "row":
            rep.rows_repaired = int(dead.shape[0])
        else:
            rep.cols_repaired = int(dead.shape[0])
        added: list[tuple[torch.Tensor, torch.Tensor]] = []
        if mode == "resample":
            dead, fallbacks, g, other = _resample(layer, flat, dead, direction, p, seed)
            rep.fallbacks += fallbacks
            rep.edges_added += int(g.numel())
            added.append((g, other))
        g, other = _add_random(layer, flat, dead, direction, seed, "flow-" + direction)
        rep.edges_added += int(g.numel())
        added.append((g, other))
        if direction == "row":  # the new row edges may have revived columns
            for g, c in added:
                col_alive[g, c] = True
    return rep


def _unit_entries(layer: Layer, dead: torch.Tensor, direction: str):
    """Grid coordinates ``(g, r, c, k)`` of entries of the dead units, shape ``(n, entries)``."""
    G, R, C, K = layer.grid()
    g = dead[:, 0:1]
    other = R if direction == "col" else C
    j = torch.arange(other * K, device=dead.device).unsqueeze(0)
    o, k = j // K, j % K
    if direction == "row":
        return g, dead[:, 1:2], o, k
    return g, o, dead[:, 1:2], k


def _add_random(
    layer: Layer, flat: torch.Tensor, dead: torch.Tensor, direction: str, seed: int, purpose: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random edge per dead unit; returns ``(group, other index)`` of each added edge."""
    if dead.numel() == 0:
        empty = dead.new_zeros(0)
        return empty, empty
    G, R, C, K = layer.grid()
    per_group = C if direction == "row" else R
    unit = dead[:, 0] * (R if direction == "row" else C) + dead[:, 1]
    key = rng.stream_key(seed, layer.fqn, purpose)
    pick = rng.choice_at(key, unit, per_group * K)
    o, k = pick // K, pick % K
    if direction == "row":
        idx = layer.flat_index(dead[:, 0], dead[:, 1], o, k)
    else:
        idx = layer.flat_index(dead[:, 0], o, dead[:, 1], k)
    flat[idx] = True
    return dead[:, 0], o


def _resample(layer: Layer, flat: torch.Tensor, dead: torch.Tensor, direction: str, p: float, seed: int):
    """Rejection sampling of dead units' entries.

    Returns:
        units still dead, their count, and the group and other-axis index of every added edge.
    """
    g, r, c, k = _unit_entries(layer, dead, direction)
    entries = layer.flat_index(g, r, c, k)  # (n, E)
    t_signed = rng.threshold(p) - (1 << 31)
    n, E = entries.shape
    block = max(1, min(64, _RESAMPLE_BLOCK_ELEMS // max(1, n * E)))
    alive = torch.zeros(n, dtype=torch.bool, device=flat.device)
    other = r if direction == "col" else c  # (1, E) or (n, 1) coordinates of the other axis
    other = other.expand(n, E)
    gs, os_ = [], []
    for first in range(1, MAX_RESAMPLE_ROUNDS + 1, block):
        todo = (~alive).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        rounds = list(range(first, min(first + block, MAX_RESAMPLE_ROUNDS + 1)))
        keys = rng.signed_keys(
            [rng.stream_key(seed, layer.fqn, f"flow-resample-{direction}/{r_}") for r_ in rounds], flat.device)
        idx = entries[todo]  # (t, E)
        draws = rng.lanes_at(keys.view(-1, 1, 1), idx.unsqueeze(0)) < t_signed  # (B, t, E)
        ok = draws.any(dim=2)  # (B, t)
        got = ok.any(dim=0)
        if not bool(got.any()):
            continue
        first_round = ok.to(torch.int8).argmax(dim=0)  # first successful round per unit
        sel = got.nonzero().squeeze(1)
        chosen = draws[first_round[sel], sel]  # (s, E)
        units = todo[sel]
        flat[idx[sel][chosen]] = True
        gs.append(dead[units, 0].unsqueeze(1).expand(-1, E)[chosen])
        os_.append(other[units][chosen])
        alive[units] = True
    still = (~alive).nonzero().squeeze(1)
    empty = dead.new_zeros(0)
    return (dead[still], int(still.numel()), torch.cat(gs) if gs else empty,
            torch.cat(os_) if os_ else empty)
