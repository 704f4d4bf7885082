"""Weight initialisation from the counter RNG, so that a strong ticket rebuilds its frozen weights from a seed.

Strong lottery tickets (paper §2.1, App. A.9; edge-popup, Ramanujan et al. 2020) never train their
weights: the ticket stores the mask bits and ``{"scheme", "seed"}``, and the weights are drawn again
when the ticket is applied. The derivation is specified in ``formats/TICKET.md`` §9.5:

* element ``i`` of weight ``fqn`` uses word ``i`` of the stream ``stream_key(seed, fqn, "init")``;
  ``lo`` and ``hi`` are its low and high 32-bit halves read as unsigned integers and
  ``u(x) = (x + 0.5) / 2**32`` (in float64);
* ``sigma = sqrt(2 / fan)`` (Kaiming gain for ReLU), ``fan = fan_in`` or, with ``scale_fan``,
  ``fan_in * d`` where ``d`` is the layer's final density (the "scaled" variants of edge-popup §4);
* ``signed-kaiming-constant``: ``+sigma`` if the word is >= 0 as a signed int64, else ``-sigma``
  (edge-popup appendix: the best initialisation for edge-popup, Tables 2-3);
* ``kaiming-uniform``: ``sigma * sqrt(3) * (2 u(hi) - 1)``;
* ``kaiming-normal``: ``sigma * sqrt(-2 ln u(lo)) * cos(2 pi u(hi))`` (Box-Muller);
* values are computed in float64 and rounded once to the weight's dtype. Signed constant weights are
  bit-identical on every device; the other two use ``log``/``cos``/``sqrt`` whose last bit may differ
  between CPU and GPU libraries (so they are bit-identical on the same kind of device).

``fan_in`` of a weight is ``numel / shape[out_axis]`` and, when the out axis is the grouped one
(transposed convolutions), divided by ``groups`` as well: the number of inputs of one output unit.
"""

from __future__ import annotations

import math

import torch

from .layers import LayerLayout
from .rng import stream_key, words

__all__ = ["INIT_SCHEMES", "fan_in", "init_weight", "uniform_from_stream"]

INIT_SCHEMES = ("signed-kaiming-constant", "kaiming-normal", "kaiming-uniform")
_CHUNK = 1 << 20
_TWO32 = 4294967296.0


def fan_in(shape: tuple[int, ...], layout: LayerLayout) -> int:
    """Inputs feeding one output unit of a weight with this shape and layout."""
    numel = math.prod(shape)
    if not numel:
        return 0
    fan = numel // shape[layout.out_axis]
    if layout.stack_axis is not None:  # one matrix per index of the stack axis (experts)
        fan //= max(1, shape[layout.stack_axis])
    elif layout.out_axis != 0:  # transposed convolutions: the out axis holds out/groups channels
        fan //= max(1, layout.groups)
    return max(1, fan)


def _halves(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = z.bitwise_and(0xFFFFFFFF).to(torch.float64)
    hi = torch.bitwise_right_shift(z, 32).bitwise_and_(0xFFFFFFFF).to(torch.float64)
    return lo, hi


def init_weight(fqn: str, shape: tuple[int, ...], layout: LayerLayout, scheme: str, seed: int, *,
                density: float = 1.0, scale_fan: bool = False, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The weight ``fqn`` drawn with ``scheme`` from ``seed`` (module docstring; TICKET.md §9.5).

    Args:
        fqn: parameter name (part of the stream key: every layer gets its own numbers).
        shape, layout: the weight's shape and axes (:class:`~sparsekit.layers.LayerLayout`).
        scheme: one of :data:`INIT_SCHEMES`.
        seed: the ticket's init seed.
        density: the layer's final density, used with ``scale_fan``.
        scale_fan: use ``fan_in * density`` as the fan (the effective fan-in of the subnetwork).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme must be one of {INIT_SCHEMES}, got {scheme!r}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    fan = fan_in(tuple(shape), layout) * (density if scale_fan else 1.0)
    sigma = math.sqrt(2.0 / fan) if fan > 0 else 0.0
    device = torch.device(device)
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=dtype, device=device)
    key = stream_key(seed, fqn, "init")
    for start in range(0, numel, _CHUNK):
        n = min(_CHUNK, numel - start)
        z = words(key, start, n, device)
        if scheme == "signed-kaiming-constant":
            s64 = torch.tensor(sigma, dtype=torch.float64, device=device)
            v = torch.where(z >= 0, s64, -s64)
        else:
            lo, hi = _halves(z)
            if scheme == "kaiming-uniform":
                v = hi.add_(0.5).div_(_TWO32).mul_(2.0).sub_(1.0).mul_(sigma * math.sqrt(3.0))
            else:
                r = lo.add_(0.5).div_(_TWO32).log_().mul_(-2.0).sqrt_()
                v = r.mul_(hi.add_(0.5).div_(_TWO32).mul_(2.0 * math.pi).cos_()).mul_(sigma)
        out[start:start + n] = v.to(dtype)
    return out.view(tuple(shape))


def uniform_from_stream(key: int, numel: int, low: float, high: float, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """``numel`` uniform values in ``(low, high)`` from words of the stream ``key`` (high halves)."""
    device = torch.device(device)
    out = torch.empty(numel, dtype=dtype, device=device)
    for start in range(0, numel, _CHUNK):
        n = min(_CHUNK, numel - start)
        _lo, hi = _halves(words(key, start, n, device))
        out[start:start + n] = hi.add_(0.5).div_(_TWO32).mul_(high - low).add_(low).to(dtype)
    return out
