"""Counter-based random numbers: the same bits on every device, thread count and chunk size.

sparsekit never uses torch's own generators for masks: CPU and CUDA streams differ, and the global
RNG state belongs to the user. Every random decision is instead a pure function of
``(seed, layer fqn, purpose, element index)``, computed with wrapping 64-bit integer arithmetic
(torch ``int64`` ops, which behave identically on CPU and CUDA). The normative description is
``formats/TICKET.md`` section "Random number generator ``sk-ctr64-v1``"; in short:

* ``mix64`` is the splitmix64 finaliser (Steele, Lea & Flood 2014, Stafford's "Mix13" constants).
* ``stream_key(seed, fqn, purpose) = mix64(mix64(seed) ^ name_hash(purpose + "\\0" + fqn))`` where
  ``name_hash`` is the first 8 bytes (little endian) of BLAKE2b-64 of the UTF-8 string.
* Word ``j`` of a stream is ``mix64(key + (j + 1) * GAMMA)``; lane ``i`` is the low (``i`` even) or high
  (``i`` odd) 32 bits of word ``i // 2``, read as a two's complement signed integer ``s_i``.
* A Bernoulli(p) element is kept iff ``s_i < threshold(p) - 2**31`` (see :func:`threshold`).

Everything here is vectorised and processes large tensors in fixed-size chunks so that the
scratch memory stays flat (two int64 buffers of ``chunk_words`` entries).
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
from collections.abc import Iterator

import torch

__all__ = [
    "RNG_ID",
    "GAMMA",
    "mix64",
    "name_hash",
    "stream_key",
    "threshold",
    "words",
    "lanes_at",
    "bernoulli_flat",
    "lane_chunks",
    "lane_range",
    "choice_at",
]

#: Identifier of this generator, stored in tickets. Bump it if a single output bit changes.
RNG_ID = "sk-ctr64-v1"

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_LITTLE_ENDIAN = sys.byteorder == "little"

#: Default chunk, in 64-bit words (two mask elements per word). 2**17 words = 1 MiB per buffer, so the
#: two scratch buffers stay in a 2 MiB L2 cache (measured fastest in benchmarks/bench_prune.py).
DEFAULT_CHUNK_WORDS = 1 << 17


def _s64(x: int) -> int:
    """The two's complement int64 value of an unsigned 64-bit integer."""
    x &= M64
    return x - (1 << 64) if x >> 63 else x


def mix64(z: int) -> int:
    """splitmix64 finaliser on Python integers (the scalar reference of :func:`_mix_`)."""
    z &= M64
    z = ((z ^ (z >> 30)) * _C1) & M64
    z = ((z ^ (z >> 27)) * _C2) & M64
    return z ^ (z >> 31)


def name_hash(text: str) -> int:
    """BLAKE2b-64 of the UTF-8 bytes of ``text`` as an unsigned integer (little endian)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def stream_key(seed: int, fqn: str, purpose: str) -> int:
    """Key of the stream used for ``purpose`` (e.g. ``"mask"``) of the weight ``fqn``.

    Args:
        seed: non-negative integer below 2**64.
        fqn: fully qualified parameter name in the unwrapped model, e.g. ``"layer1.0.conv1.weight"``.
        purpose: what the numbers are for; different purposes give independent streams.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= M64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return mix64(mix64(seed) ^ name_hash(purpose + "\0" + fqn))


def threshold(p: float) -> int:
    """Integer threshold ``T`` in ``[0, 2**32]`` for a Bernoulli(p) draw from a 32-bit lane.

    ``T = round_half_even(p * 2**32)``, at least 1 when ``p > 0`` (so that a positive density never
    means "always empty") and exactly ``2**32`` when ``p >= 1``.
    """
    if not (isinstance(p, (int, float)) and math.isfinite(p)) or p < 0:
        raise ValueError(f"probability must be a finite number >= 0, got {p!r}")
    if p >= 1:
        return 1 << 32
    if p == 0:
        return 0
    return max(1, min((1 << 32) - 1, round(float(p) * 4294967296.0)))


_MASK34 = (1 << 34) - 1
_MASK37 = (1 << 37) - 1
_MASK33 = (1 << 33) - 1


def _mix_(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """In-place splitmix64 finaliser on an int64 tensor, ``t`` is scratch of the same shape.

    torch's ``>>`` on int64 is arithmetic, so logical shifts are an arithmetic shift and a mask.
    Multiplication wraps modulo 2**64 on CPU and CUDA.
    """
    torch.bitwise_right_shift(z, 30, out=t)
    t.bitwise_and_(_MASK34)
    z.bitwise_xor_(t)
    z.mul_(_s64(_C1))
    torch.bitwise_right_shift(z, 27, out=t)
    t.bitwise_and_(_MASK37)
    z.bitwise_xor_(t)
    z.mul_(_s64(_C2))
    torch.bitwise_right_shift(z, 31, out=t)
    t.bitwise_and_(_MASK33)
    z.bitwise_xor_(t)
    return z


_SCRATCH: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _scratch(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ramp, z, t)`` for chunks of ``n`` words: ``ramp = [0, G, 2G, ...]`` (wrapping) and two
    work buffers, cached per (device, n, thread) and shared by every layer and chunk (flat memory)."""
    key = (str(device), n, threading.get_ident())
    bufs = _SCRATCH.get(key)
    if bufs is None:
        ramp = torch.arange(n, dtype=torch.int64, device=device).mul_(_s64(GAMMA))
        if len(_SCRATCH) > 4:
            _SCRATCH.clear()
        bufs = _SCRATCH[key] = (ramp, torch.empty_like(ramp), torch.empty_like(ramp))
    return bufs


def words(key: int, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Words ``start .. start + count - 1`` of the stream ``key`` as an int64 tensor."""
    device = torch.device(device)
    z = torch.arange(count, dtype=torch.int64, device=device).mul_(_s64(GAMMA))
    z.add_(_s64(key + (start + 1) * GAMMA))
    return _mix_(z, torch.empty_like(z))


def _lanes_of_words(z: torch.Tensor) -> torch.Tensor:
    """Signed 32-bit lanes of int64 words, low half first (a view on little-endian hosts)."""
    if _LITTLE_ENDIAN:
        return z.view(torch.int32)
    lo = torch.bitwise_left_shift(z, 32).bitwise_right_shift_(32)
    hi = torch.bitwise_right_shift(z, 32)
    return torch.stack([lo, hi], dim=-1).flatten().to(torch.int32)


def lane_chunks(
    key: int, numel: int, *, device: torch.device | str = "cpu", chunk_words: int = DEFAULT_CHUNK_WORDS
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first element index, signed int32 lanes)`` covering lanes ``0 .. numel - 1``.

    The yielded tensor is a view into a reused buffer: consume it before the next iteration.
    """
    device = torch.device(device)
    nwords = (numel + 1) // 2
    if nwords == 0:
        return
    chunk_words = max(1, int(chunk_words))
    ramp, z, scratch = _scratch(chunk_words, device)
    for w0 in range(0, nwords, chunk_words):
        m = min(chunk_words, nwords - w0)
        zc = z[:m]
        torch.add(ramp[:m], _s64(key + (w0 + 1) * GAMMA), out=zc)
        _mix_(zc, scratch[:m])
        e0 = 2 * w0
        yield e0, _lanes_of_words(zc)[: min(numel, e0 + 2 * m) - e0]


def lane_range(key: int, start: int, count: int, *, device: torch.device | str = "cpu",
               chunk_words: int = DEFAULT_CHUNK_WORDS) -> torch.Tensor:
    """Signed int32 lanes ``start .. start + count - 1`` of the stream ``key``.

    When the range spans at most ``chunk_words`` words the result is a view into a reused buffer
    (consume it before the next call); longer ranges get a fresh tensor.
    """
    device = torch.device(device)
    w0 = start // 2
    nwords = (start + count + 1) // 2 - w0
    if nwords <= chunk_words:
        ramp, z, scratch = _scratch(chunk_words, device)
        zc = z[:nwords]
        torch.add(ramp[:nwords], _s64(key + (w0 + 1) * GAMMA), out=zc)
        _mix_(zc, scratch[:nwords])
    else:
        zc = words(key, w0, nwords, device)
    off = start - 2 * w0
    return _lanes_of_words(zc)[off: off + count]


def bernoulli_flat(
    key: int,
    numel: int,
    p: float,
    *,
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
) -> torch.Tensor:
    """Flat boolean Bernoulli(p) mask of ``numel`` elements from the stream ``key``.

    Element ``i`` is kept iff lane ``i`` (signed) is below ``threshold(p) - 2**31``. The result does
    not depend on ``chunk_words``, the device or the number of threads.
    """
    device = torch.device(device)
    if out is None:
        out = torch.empty(numel, dtype=torch.bool, device=device)
    elif out.numel() != numel or out.dtype != torch.bool:
        raise ValueError("out must be a bool tensor with numel elements")
    T = threshold(p)
    if T >= 1 << 32:
        return out.fill_(True)
    if T == 0:
        return out.fill_(False)
    t_signed = T - (1 << 31)
    for e0, lanes in lane_chunks(key, numel, device=device, chunk_words=chunk_words):
        torch.lt(lanes, t_signed, out=out[e0:e0 + lanes.numel()])
    return out


def lanes_at(key: int | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Signed 32-bit lane values (as int64) at arbitrary element indices of the stream(s) ``key``.

    ``key`` may be an int64 tensor broadcastable against ``index`` (one stream per entry).
    """
    index = index.to(torch.int64)
    z = torch.bitwise_right_shift(index, 1).add_(1).mul_(_s64(GAMMA))
    if isinstance(key, torch.Tensor):
        z = z + key
    else:
        z.add_(_s64(key))
    _mix_(z, torch.empty_like(z))
    hi = torch.bitwise_right_shift(z, 32)
    lo = torch.bitwise_left_shift(z, 32).bitwise_right_shift_(32)
    return torch.where(index.bitwise_and(1).bool(), hi, lo)


def choice_at(key: int, counter: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Uniform integers in ``[0, n)``: ``((word(counter) >>> 32) * n) >>> 32`` (Lemire's method).

    ``n`` must be below 2**31. Used for the random edges of flow repair.
    """
    counter = counter.to(torch.int64)
    z = (counter + 1).mul_(_s64(GAMMA)).add_(_s64(key))
    _mix_(z, torch.empty_like(z))
    u = torch.bitwise_right_shift(z, 32).bitwise_and_(0xFFFFFFFF)
    return torch.bitwise_right_shift(u * n, 32)


def signed_keys(keys: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A list of unsigned 64-bit keys as an int64 tensor (two's complement)."""
    return torch.tensor([_s64(k) for k in keys], dtype=torch.int64, device=device)
