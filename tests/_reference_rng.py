"""A second, independent implementation of formats/TICKET.md §2-§4 in plain Python integers.

It shares no code with sparsekit.rng (only the spec), so a test comparing the two can fail.
"""

from __future__ import annotations

import hashlib

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def text_hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def key(seed: int, fqn: str, purpose: str) -> int:
    return mix(mix(seed) ^ text_hash(f"{purpose}\x00{fqn}"))


def word(k: int, j: int) -> int:
    return mix((k + (j + 1) * GOLDEN_GAMMA) & MASK64)


def lane(k: int, i: int) -> int:
    """Signed 32-bit lane i."""
    u = (word(k, i // 2) >> (32 * (i % 2))) & 0xFFFFFFFF
    return u - (1 << 32) if u >= 1 << 31 else u


def thresh(p: float) -> int:
    if p >= 1:
        return 1 << 32
    if p <= 0:
        return 0
    return max(1, min((1 << 32) - 1, round(p * 2**32)))


def bernoulli(k: int, n: int, p: float) -> list[bool]:
    t = thresh(p) - (1 << 31)
    return [lane(k, i) < t for i in range(n)]


def exact(k: int, n: int, p: float) -> list[bool]:
    count = min(n, max(0, round(p * n)))
    order = sorted(range(n), key=lambda i: (lane(k, i), i))[:count]
    out = [False] * n
    for i in order:
        out[i] = True
    return out


def choice(k: int, counter: int, n: int) -> int:
    return (((word(k, counter) >> 32) & 0xFFFFFFFF) * n) >> 32
