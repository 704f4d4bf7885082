"""Drawing masks from layer densities (paper §2: ``s_ij ~ Ber(p_l)`` independently).

``exact=False`` (default) is the paper's Erdős–Rényi mask: every element is kept independently with
probability ``p_l``, so the number of nonzeros is Binomial(m_l, p_l). ``exact=True`` keeps exactly
``round(p_l * m_l)`` elements: those with the smallest random lanes (ties broken by index), i.e. a
uniformly random subset of that size. Both use the counter RNG of :mod:`sparsekit.rng` with
purpose ``"mask"``, so for the same seed an exact mask and a Bernoulli mask are nested.
"""

from __future__ import annotations

import math

import torch

from . import rng

__all__ = ["draw_mask", "exact_count"]


def exact_count(numel: int, p: float) -> int:
    """Number of kept elements of an exact mask: ``round_half_even(p * numel)``."""
    return min(numel, max(0, round(p * numel)))


def draw_mask(
    fqn: str,
    shape: tuple[int, ...],
    p: float,
    seed: int,
    *,
    exact: bool = False,
    device: torch.device | str = "cpu",
    chunk_words: int = rng.DEFAULT_CHUNK_WORDS,
) -> torch.Tensor:
    """Boolean mask of ``shape`` for the weight ``fqn`` at density ``p``; a pure function of its arguments."""
    numel = math.prod(shape)
    key = rng.stream_key(seed, fqn, "mask")
    if not exact:
        return rng.bernoulli_flat(key, numel, p, device=device, chunk_words=chunk_words).view(shape)
    k = exact_count(numel, p)
    out = torch.zeros(numel, dtype=torch.bool, device=device)
    if k == numel:
        return out.fill_(True).view(shape)
    if k == 0:
        return out.view(shape)
    # Candidates: lanes under a threshold that keeps comfortably more than k of them on average.
    expected = k + 8.0 * math.sqrt(k) + 64.0
    while True:
        T = min(1 << 32, math.ceil(expected / numel * 4294967296.0))
        t_signed = T - (1 << 31)
        vals, idx = [], []
        for e0, lanes in rng.lane_chunks(key, numel, device=device, chunk_words=chunk_words):
            hit = (lanes < t_signed).nonzero().squeeze(1) if T < 1 << 32 else torch.arange(
                lanes.numel(), device=lanes.device)
            vals.append(lanes[hit].to(torch.int64))
            idx.append(hit + e0)
        v = torch.cat(vals)
        if v.numel() >= k:
            break
        expected *= 2.0
    order = torch.sort(v, stable=True).indices[:k]
    out[torch.cat(idx)[order]] = True
    return out.view(shape)
