"""Mask structures: *how* a layer's mask is drawn at the density ``p_l`` its scheme chose.

The layerwise density schemes (paper §3: uniform, ERK, balanced, pyramidal, ER-SNIP, ...) decide one
density ``p_l`` per layer; a *structure* decides the shape of the random graph drawn at that density.
Every structure is a pure function of ``(seed, fqn, shape, layout, p_l, structure, flow)`` computed with
the counter RNG (:mod:`sparsekit.rng`), bit-identical on every device; ``formats/TICKET.md`` §11 is the
normative description.

All structures work on the *matrix view* of a weight: for each group ``g`` of its grid ``(G, R, C, K)``
(:meth:`sparsekit.layers.Layer.grid`) an ``R x (C * K)`` matrix whose column ``c * K + k`` is input
channel ``c``, kernel element ``k``. For a Linear layer this is the weight itself; for a Conv with
``groups=1`` it is ``weight.reshape(out, -1)``, the matrix an im2col / implicit GEMM multiplies.

* ``element`` (default): the paper's Erdős–Rényi mask, every weight kept with probability ``p_l``
  (:func:`sparsekit.sampling.draw_mask`, unchanged and bit-identical to earlier releases).
* ``block:HxW``: Erdős–Rényi over the grid of ``H x W`` blocks of the matrix view (edge blocks are
  smaller when the sizes do not divide). Every block is kept with probability ``p_l``, so the
  expected density of kept weights is ``p_l`` exactly. Flow preservation (App. A.1) works on blocks:
  every block-row and block-column keeps a block, which implies that every neuron and input keeps an
  edge; the repair counters count blocks.
* ``fanin``: constant fan-in. Every output neuron keeps exactly ``k = max(1, round(p_l * C * K))`` of
  its ``C * K`` inputs, a uniformly random subset (the ``k`` smallest random lanes), as in SRigL's
  constant fan-in (Lasby et al., ICLR 2024). Rows are alive by construction; a dead input column is
  revived by *moving* an edge (the row keeps ``k``), see :func:`repair_by_swap`.
* ``nm:N:M`` (e.g. 2:4): in every row, of every ``M`` consecutive columns of the matrix view exactly
  ``N`` are kept, chosen at random; a trailing group of ``s < M`` columns keeps ``min(N, s)``. A layer
  is either N:M (density ``N/M``) or dense; which layers stay dense is decided from the scheme's
  densities by :func:`nm_layer_densities`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import rng
from .flow import Repair
from .layers import Layer

__all__ = ["Structure", "parse_structure", "draw_structured", "nm_layer_densities", "STRUCTURE_KINDS",
           "matrix_view", "from_matrix_view", "repair_by_swap"]

STRUCTURE_KINDS = ("element", "block", "fanin", "nm")
_MAX_SIDE = 1 << 20
_TOPK_CHUNK_ELEMS = 1 << 22
_HELP = ("'element' (default), 'block:HxW' (e.g. 'block4x4', 'block:1x4', ('block', (16, 16))), "
         "'fanin' (constant fan-in) or 'nm:N:M' (e.g. 'nm2:4')")


@dataclass(frozen=True)
class Structure:
    """A mask structure (the config object behind ``structure="block4x4"``).

    Attributes:
        kind: ``"element"``, ``"block"``, ``"fanin"`` or ``"nm"``.
        block: ``(rows, cols)`` of a block of the matrix view (``kind="block"``).
        n: kept weights per group (``kind="nm"``).
        m: group length along the input dimension (``kind="nm"``).
    """

    kind: str = "element"
    block: tuple[int, int] = (1, 1)
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURE_KINDS:
            raise ValueError(f"unknown structure kind {self.kind!r}; expected {_HELP}")
        if self.kind == "block":
            b = self.block
            if (not isinstance(b, tuple) or len(b) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= _MAX_SIDE for x in b)):
                raise ValueError(f"block must be two integers in [1, {_MAX_SIDE}] (rows, cols), got {b!r}")
        if self.kind == "nm":
            ok = all(isinstance(x, int) and not isinstance(x, bool) for x in (self.n, self.m))
            if not ok or not 1 <= self.n < self.m <= 1024:
                raise ValueError(f"N:M needs integers 1 <= N < M <= 1024, got N={self.n!r}, M={self.m!r}")

    @property
    def is_element(self) -> bool:
        return self.kind == "element"

    def __str__(self) -> str:
        if self.kind == "block":
            return f"block:{self.block[0]}x{self.block[1]}"
        if self.kind == "nm":
            return f"nm:{self.n}:{self.m}"
        return self.kind


_BLOCK_RE = re.compile(r"block[:\-_ ]?(\d+)x(\d+)")
_NM_RE = re.compile(r"(?:nm|n:m)?[:\-_ ]?(\d+):(\d+)")


def parse_structure(value: object) -> Structure:
    """A :class:`Structure` from a string, a ``(kind, params)`` tuple, None or a Structure.

    Accepted: ``None``/``"element"``; ``"block4x4"``, ``"block:16x16"``, ``("block", (16, 16))``,
    ``("block", 4)`` (square); ``"fanin"`` (also ``"constant-fanin"``, ``"fan-in"``); ``"nm2:4"``,
    ``"nm:2:4"``, ``"2:4"``, ``("nm", (2, 4))``, ``"er-nm"`` (2:4).

    Raises:
        ValueError: anything else, naming the accepted forms.
    """
    if value is None:
        return Structure()
    if isinstance(value, Structure):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        kind, params = value[0].lower(), value[1]
        if kind == "block":
            if isinstance(params, int) and not isinstance(params, bool):
                params = (params, params)
            return Structure("block", tuple(params) if isinstance(params, (tuple, list)) else params)
        if kind in ("nm", "n:m") and isinstance(params, (tuple, list)) and len(params) == 2:
            return Structure("nm", n=params[0], m=params[1])
        raise ValueError(f"structure {value!r} not understood; expected {_HELP}")
    if not isinstance(value, str):
        raise TypeError(f"structure must be a string, a (kind, params) tuple or sparsekit.Structure, got "
                        f"{type(value).__name__}; expected {_HELP}")
    s = value.strip().lower()
    if s in ("element", "elementwise", "element-wise", "unstructured"):
        return Structure()
    if s in ("fanin", "fan-in", "constant-fanin", "constant-fan-in"):
        return Structure("fanin")
    if s in ("nm", "er-nm", "semi-structured"):
        return Structure("nm", n=2, m=4)
    m = _BLOCK_RE.fullmatch(s)
    if m:
        return Structure("block", (int(m.group(1)), int(m.group(2))))
    m = _NM_RE.fullmatch(s)
    if m:
        return Structure("nm", n=int(m.group(1)), m=int(m.group(2)))
    raise ValueError(f"unknown structure {value!r}; expected {_HELP}")


# --------------------------------------------------------------------------------------------------
# the matrix view


def matrix_view(layer: Layer, t: torch.Tensor) -> torch.Tensor:
    """``t`` (the layer's shape) as ``(G, R, C * K)``: per group, rows x (input channel, kernel element)."""
    G, R, C, K = layer.grid()
    return layer.as_grid(t).reshape(G, R, C * K)


def from_matrix_view(layer: Layer, m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`matrix_view`: a contiguous tensor of the layer's shape."""
    G, R, C, K = layer.grid()
    lo = layer.layout
    perm = layer._perm()
    grid = m.reshape(G, R, C, K)
    if lo.stack_axis is not None:
        order = [lo.stack_axis, lo.out_axis, lo.in_axis] + perm[2:]
    else:
        order = perm
        if not layer._lead_is_out:
            grid = grid.transpose(1, 2)
    shaped = grid.reshape([layer.shape[a] for a in order])
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return shaped.permute(inverse).contiguous()


def _mask_lanes(layer: Layer, seed: int, device: torch.device, chunk_words: int) -> torch.Tensor:
    """Lanes of stream ``(seed, fqn, "mask")`` at every element (C-order index), as ``(G, R, C*K)`` int32."""
    key = rng.stream_key(seed, layer.fqn, "mask")
    flat = torch.empty(layer.numel, dtype=torch.int32, device=device)
    for e0, lanes in rng.lane_chunks(key, layer.numel, device=device, chunk_words=chunk_words):
        flat[e0:e0 + lanes.numel()] = lanes
    return matrix_view(layer, flat.view(layer.shape))


def _sort_keys(lanes: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering entries by ``(lane, column)`` (all distinct within a row)."""
    cols = torch.arange(lanes.shape[-1], dtype=torch.int64, device=lanes.device)
    return lanes.to(torch.int64).mul_(1 << 32).add_(cols)


# --------------------------------------------------------------------------------------------------
# drawing


def fanin_count(p: float, fan_in: int) -> int:
    """Kept inputs per output neuron of a constant fan-in mask: ``max(1, round_half_even(p * fan_in))``."""
    if fan_in == 0:
        return 0
    return min(fan_in, max(1, round(p * fan_in)))


def _fanin(lanes: torch.Tensor, p: float) -> torch.Tensor:
    """Constant fan-in is N:M with one group per row: the ``k`` entries of lowest ``(lane, column)``."""
    G, R, CK = lanes.shape
    k = fanin_count(p, CK)
    if k == 0:
        return torch.zeros(G, R, CK, dtype=torch.bool, device=lanes.device)
    return _nm(lanes, k, CK)


def _nm(lanes: torch.Tensor, n: int, m: int) -> torch.Tensor:
    G, R, CK = lanes.shape
    ngroups = -(-CK // m)
    width = ngroups * m
    rows = lanes.reshape(G * R, CK)
    out = torch.zeros(G * R, width, dtype=torch.bool, device=lanes.device)
    step = max(1, _TOPK_CHUNK_ELEMS // max(1, width))
    big = torch.iinfo(torch.int64).max
    for r0 in range(0, G * R, step):
        keys = _sort_keys(rows[r0:r0 + step])
        if width > CK:  # padding sorts last, so a trailing group of s < M columns keeps min(N, s)
            keys = torch.cat([keys, torch.full((keys.shape[0], width - CK), big, dtype=torch.int64,
                                               device=keys.device)], dim=1)
        idx = keys.view(-1, ngroups, m).topk(n, dim=2, largest=False, sorted=False).indices
        out[r0:r0 + step].view(-1, ngroups, m).scatter_(2, idx, True)
    return out[:, :CK].reshape(G, R, CK)


def _block(layer: Layer, p: float, seed: int, bh: int, bw: int, flow: str | None, device: torch.device
           ) -> tuple[torch.Tensor, Repair]:
    G, R, C, K = layer.grid()
    CK = C * K
    nbr, nbc = -(-R // bh), -(-CK // bw)
    key = rng.stream_key(seed, layer.fqn, "mask-block")
    blocks = rng.bernoulli_flat(key, G * nbr * nbc, p, device=device).view(G, nbr, nbc)
    rep = Repair()
    if flow is not None and blocks.numel():
        dead = (~blocks.any(dim=2)).nonzero()
        if dead.numel():
            x = rng.choice_at(rng.stream_key(seed, layer.fqn, "flow-row"), dead[:, 0] * nbr + dead[:, 1], nbc)
            blocks[dead[:, 0], dead[:, 1], x] = True
            rep.rows_repaired = rep.edges_added = int(dead.shape[0])
        dead = (~blocks.any(dim=1)).nonzero()
        if dead.numel():
            x = rng.choice_at(rng.stream_key(seed, layer.fqn, "flow-col"), dead[:, 0] * nbc + dead[:, 1], nbr)
            blocks[dead[:, 0], x, dead[:, 1]] = True
            rep.cols_repaired = int(dead.shape[0])
            rep.edges_added += int(dead.shape[0])
    rows = torch.arange(R, device=device) // bh  # block of each row / column: memory stays O(layer)
    cols = torch.arange(CK, device=device) // bw
    return blocks[:, rows][:, :, cols], rep


def repair_by_swap(layer: Layer, mv: torch.Tensor, lanes: torch.Tensor, seed: int, group_len: int | None
                   ) -> Repair:
    """Revive dead input columns by moving an edge, so every row keeps its edge count; in place.

    For each dead column ``(g, c)`` in ascending order, ``x = choice(key(seed, fqn, "flow-col"), g * C + c,
    R * K)`` gives a start row ``r0 = x // K`` and kernel element ``kk = x % K``; rows ``r0, r0 + 1, ...``
    (cyclically) are tried in turn. In row ``r`` the *donors* are its kept entries whose input channel
    keeps at least two edges (and, for N:M, that lie in the same group of ``M`` columns as entry
    ``(c, kk)``); the donor with the largest ``(lane, column)`` key (the least preferred by the draw) is
    dropped and ``(r, c, kk)`` is kept. When no row has a donor, ``(r0, c, kk)`` is added instead (the
    row's count grows by one) and counted in ``fallbacks`` and ``edges_added``.

    Args:
        mv: the mask in matrix view ``(G, R, C*K)``.
        lanes: the ``"mask"`` lanes in the same view (the draw's preference order).
        group_len: ``M`` for N:M masks, None for constant fan-in.
    """
    G, R, C, K = layer.grid()
    CK = C * K
    rep = Repair()
    if mv.numel() == 0:
        return rep
    deg_t = mv.reshape(G, R, C, K).sum(dim=(1, 3))  # (G, C)
    dead = (deg_t == 0).nonzero().cpu()  # ascending (g, c)
    if dead.numel() == 0:
        return rep
    rep.cols_repaired = int(dead.shape[0])
    key = rng.stream_key(seed, layer.fqn, "flow-col")
    picks = rng.choice_at(key, (dead[:, 0] * C + dead[:, 1]).to(mv.device), R * K).cpu().tolist()
    # The moves are sequential (each changes the degrees the next one reads), so they run on the CPU in
    # numpy, whose small single-threaded operations cost microseconds, then go back to the device.
    deg = deg_t.cpu().numpy().astype(np.int64)
    col_of = np.arange(CK) // K
    todo: dict[int, list[tuple[int, int]]] = {}
    for (g, c), x in zip(dead.tolist(), picks, strict=True):
        todo.setdefault(g, []).append((c, x))
    for g, items in todo.items():
        on_cpu = mv.device.type == "cpu"
        m = mv[g].numpy() if on_cpu else mv[g].cpu().numpy()  # on the CPU a view: writes go to mv
        ln = lanes[g].cpu().numpy()
        rich = deg[g] >= 2  # channels that can give up an edge and stay alive
        rich_pos = rich[col_of]
        rc = (m & rich_pos).sum(axis=1) if group_len is None else None  # donors per row (fan-in)
        for n_done, (c, x) in enumerate(items):
            r0, kk = divmod(x, K)
            pos = c * K + kk
            if group_len is None:
                if not rc.any():  # no donor left in this group, and fallbacks create none: add the rest
                    rest = items[n_done:]
                    m[[y // K for _, y in rest], [cc * K + y % K for cc, y in rest]] = True
                    deg[g, [cc for cc, _ in rest]] += 1
                    rep.fallbacks += len(rest)
                    rep.edges_added += len(rest)
                    break
                rows = np.flatnonzero(rc)
                lo = 0
                sub = None
            else:
                lo = pos // group_len * group_len
                sub = m[:, lo:lo + group_len] & rich_pos[lo:lo + group_len]
                rows = np.flatnonzero(sub.any(axis=1))
            if rows.size == 0:
                m[r0, pos] = True
                deg[g, c] += 1
                rep.fallbacks += 1
                rep.edges_added += 1
                continue
            r = int(rows[np.argmin((rows - r0) % R)])  # the first row with a donor, cyclically from r0
            js = np.flatnonzero(m[r] & rich_pos) if sub is None else lo + np.flatnonzero(sub[r])
            drop = int(js[np.argmax(ln[r, js].astype(np.int64) * (1 << 32) + js)])
            m[r, drop] = False
            m[r, pos] = True
            dc = drop // K
            deg[g, dc] -= 1
            deg[g, c] += 1
            if rc is not None:
                rc[r] -= 1
            if deg[g, dc] < 2:  # dc gave its last spare edge: its remaining edge is no donor any more
                rich[dc] = False
                rich_pos[dc * K:(dc + 1) * K] = False
                if rc is not None:
                    rc -= m[:, dc * K:(dc + 1) * K].sum(axis=1)
        if not on_cpu:
            mv[g].copy_(torch.from_numpy(m))
    return rep


def draw_structured(
    layer: Layer,
    p: float,
    seed: int,
    structure: Structure,
    flow: str | None = "repair",
    *,
    device: torch.device | str = "cpu",
    chunk_words: int = rng.DEFAULT_CHUNK_WORDS,
) -> tuple[torch.Tensor, Repair]:
    """The mask (bool, the layer's shape, contiguous) of a non-element structure and its flow repair.

    Args:
        layer: the weight (its fqn, shape and layout).
        p: the layer's density (for N:M it must be ``N / M``).
        seed: the ticket's seed.
        structure: block, fanin or nm (element masks come from :func:`sparsekit.sampling.draw_mask`).
        flow: ``"repair"`` or None (``"resample"`` is defined for element masks only).

    Raises:
        ValueError: an element structure, an unsupported flow mode, or a density that does not fit.
    """
    device = torch.device(device)
    if structure.is_element:
        raise ValueError("element masks are drawn by sparsekit.sampling.draw_mask")
    if flow not in ("repair", None):
        raise ValueError(f"flow={flow!r} is not defined for structure {structure}; use flow='repair' or None")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 <= p < 1):
        raise ValueError(f"density must be in [0, 1) for a structured mask, got {p!r}")
    if structure.kind == "block":
        mv, rep = _block(layer, p, seed, *structure.block, flow, device)
        return from_matrix_view(layer, mv), rep
    lanes = _mask_lanes(layer, seed, device, chunk_words)
    if structure.kind == "fanin":
        mv = _fanin(lanes, p)
        group_len = None
    else:
        if p != structure.n / structure.m:
            raise ValueError(f"an {structure} layer has density {structure.n / structure.m!r}, got {p!r}")
        mv = _nm(lanes, structure.n, structure.m)
        group_len = structure.m
    rep = repair_by_swap(layer, mv, lanes, seed, group_len) if flow is not None else Repair()
    return from_matrix_view(layer, mv), rep


def nm_layer_densities(numels: dict[str, int], densities: dict[str, float], target: float,
                       structure: Structure, keep_dense: set[str] | frozenset[str] = frozenset()
                       ) -> dict[str, float]:
    """Per-layer densities of an N:M ticket: ``N/M`` or 1, chosen from the scheme's densities.

    N:M fixes a layer's density at ``q = N / M``, so the global target is met by choosing which layers
    stay dense. The layers in ``keep_dense`` (the caller's ``dense=``) stay dense; every other layer
    starts at ``q``, even one the scheme capped at 1; then, in descending order of the scheme's ``p_l``
    (ties: module order), a layer becomes dense when the global density stays at or below ``target``.
    The realised global density is therefore in ``[q, target]``.

    Raises:
        ValueError: ``target`` below ``q``, or below what the ``keep_dense`` layers plus N:M elsewhere give.
    """
    q = structure.n / structure.m
    if target < q:
        raise ValueError(f"structure {structure} keeps exactly {structure.n} of every {structure.m} weights, so a "
                         f"layer's density is {q:g} or 1 and the global density cannot go below {q:g}; got "
                         f"density={target:g}: use density >= {q:g}, or structure 'element', 'block:HxW' or 'fanin'")
    total = sum(numels.values())
    out = {f: (1.0 if f in keep_dense else q) for f in densities}
    kept = sum(out[f] * numels[f] for f in out)
    budget = target * total * (1 + 1e-12)
    if kept > budget:
        raise ValueError(f"the layers kept dense plus {structure} everywhere else give density {kept / total:.4g}, "
                         f"above the target {target:g}: raise the density or keep fewer layers dense")
    order = sorted((f for f in out if out[f] < 1), key=lambda f: -densities[f])  # stable: module order on ties
    for f in order:
        extra = (1 - q) * numels[f]
        if kept + extra <= budget:
            out[f] = 1.0
            kept += extra
    return out
