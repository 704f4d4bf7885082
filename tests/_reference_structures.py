"""A second, independent implementation of formats/TICKET.md §11 (structured masks) in plain Python.

It shares no code with sparsekit.structures (only the spec and the §2 primitives of _reference_rng), so
a test comparing the two can fail. It covers weights whose out axis leads (Linear, Conv with groups):
there the matrix view of group ``g`` is the C-order flat weight, rows ``g*R .. g*R+R-1``.
"""

from __future__ import annotations

import math

import _reference_rng as ref


def grid(shape: tuple[int, ...], groups: int = 1) -> tuple[int, int, int, int]:
    out, cin = shape[0], shape[1]
    return groups, out // groups, cin, math.prod(shape[2:])


def _flat(G: int, R: int, CK: int, g: int, r: int, j: int) -> int:
    return (g * R + r) * CK + j


def _kept(mask: list[bool], G: int, R: int, CK: int, g: int, r: int, j: int) -> bool:
    return mask[_flat(G, R, CK, g, r, j)]


def block(seed: int, fqn: str, shape: tuple[int, ...], p: float, bh: int, bw: int, groups: int = 1,
          flow: bool = True) -> tuple[list[bool], dict[str, int]]:
    G, R, C, K = grid(shape, groups)
    CK = C * K
    nbr, nbc = -(-R // bh), -(-CK // bw)
    k = ref.key(seed, fqn, "mask-block")
    t = ref.thresh(p) - 2**31
    B = [[[ref.lane(k, (g * nbr + i) * nbc + j) < t for j in range(nbc)] for i in range(nbr)] for g in range(G)]
    rep = {"edges_added": 0, "rows_repaired": 0, "cols_repaired": 0, "fallbacks": 0}
    if flow:
        kr = ref.key(seed, fqn, "flow-row")
        for g in range(G):
            for i in range(nbr):
                if not any(B[g][i]):
                    B[g][i][ref.choice(kr, g * nbr + i, nbc)] = True
                    rep["rows_repaired"] += 1
                    rep["edges_added"] += 1
        kc = ref.key(seed, fqn, "flow-col")
        for g in range(G):
            for j in range(nbc):
                if not any(B[g][i][j] for i in range(nbr)):
                    B[g][ref.choice(kc, g * nbc + j, nbr)][j] = True
                    rep["cols_repaired"] += 1
                    rep["edges_added"] += 1
    mask = [B[g][r // bh][j // bw] for g in range(G) for r in range(R) for j in range(CK)]
    return mask, rep


def _order(k: int, G: int, R: int, CK: int, g: int, r: int, cols: list[int]) -> list[int]:
    return sorted(cols, key=lambda j: (ref.lane(k, _flat(G, R, CK, g, r, j)), j))


def fanin(seed: int, fqn: str, shape: tuple[int, ...], p: float, groups: int = 1,
          flow: bool = True) -> tuple[list[bool], dict[str, int]]:
    G, R, C, K = grid(shape, groups)
    CK = C * K
    kk = min(CK, max(1, round(p * CK)))
    k = ref.key(seed, fqn, "mask")
    mask = [False] * (G * R * CK)
    for g in range(G):
        for r in range(R):
            for j in _order(k, G, R, CK, g, r, list(range(CK)))[:kk]:
                mask[_flat(G, R, CK, g, r, j)] = True
    rep = _swap(seed, fqn, mask, G, R, C, K, None) if flow else _empty()
    return mask, rep


def nm(seed: int, fqn: str, shape: tuple[int, ...], n: int, m: int, groups: int = 1,
       flow: bool = True) -> tuple[list[bool], dict[str, int]]:
    G, R, C, K = grid(shape, groups)
    CK = C * K
    k = ref.key(seed, fqn, "mask")
    mask = [False] * (G * R * CK)
    for g in range(G):
        for r in range(R):
            for start in range(0, CK, m):
                cols = list(range(start, min(CK, start + m)))
                for j in _order(k, G, R, CK, g, r, cols)[:n]:
                    mask[_flat(G, R, CK, g, r, j)] = True
    rep = _swap(seed, fqn, mask, G, R, C, K, m) if flow else _empty()
    return mask, rep


def _empty() -> dict[str, int]:
    return {"edges_added": 0, "rows_repaired": 0, "cols_repaired": 0, "fallbacks": 0}


def _swap(seed: int, fqn: str, mask: list[bool], G: int, R: int, C: int, K: int, m: int | None) -> dict[str, int]:
    CK = C * K
    rep = _empty()
    lk = ref.key(seed, fqn, "mask")
    deg = [[sum(mask[_flat(G, R, CK, g, r, c * K + x)] for r in range(R) for x in range(K)) for c in range(C)]
           for g in range(G)]
    dead = [(g, c) for g in range(G) for c in range(C) if deg[g][c] == 0]
    rep["cols_repaired"] = len(dead)
    kc = ref.key(seed, fqn, "flow-col")
    for g, c in dead:
        x = ref.choice(kc, g * C + c, R * K)
        r0, kx = divmod(x, K)
        pos = c * K + kx
        for t in range(R):
            r = (r0 + t) % R
            cands = [j for j in range(CK) if mask[_flat(G, R, CK, g, r, j)] and deg[g][j // K] >= 2
                     and (m is None or j // m == pos // m)]
            if cands:
                drop = max(cands, key=lambda j: (ref.lane(lk, _flat(G, R, CK, g, r, j)), j))
                mask[_flat(G, R, CK, g, r, drop)] = False
                mask[_flat(G, R, CK, g, r, pos)] = True
                deg[g][drop // K] -= 1
                deg[g][c] += 1
                break
        else:
            mask[_flat(G, R, CK, g, r0, pos)] = True
            deg[g][c] += 1
            rep["fallbacks"] += 1
            rep["edges_added"] += 1
    return rep
