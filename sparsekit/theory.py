"""The paper's existence theory, made executable (§2: Lemma 2.1, Theorems 2.4-2.7, App. A.2-A.6).

Notation of the paper: a target network ``f_T`` of depth ``L`` with input size ``d = n_{T,0}``, layer
widths ``n_{T,l}`` and ``m_{T,l}`` nonzero weights in layer ``l = 1..L``; an ER source network ``f_S`` of
depth ``L + 1`` (layers ``l = 0..L``) whose layer ``l`` keeps every edge independently with probability
``p_l``. The weak-ticket construction (App. A.3-A.4) makes source layer 0 *univariate* (blocks of
``q_0`` neurons that copy one input each), puts ``q_l`` copies of every target neuron in source layer
``l`` (``q_L = 1``) and represents each target weight ``w_{T,ij}`` by one unmasked source edge from a
copy of ``i`` into the block of ``j``. It works iff every copy finds such an edge for every nonzero
target weight, which happens with probability (App. A.4)

    P = prod_{l=1..L} (1 - (1 - p_l)^{q_{l-1}})^{m_{T,l} q_l}.

What is here:

* :func:`weak_ticket_widths`: the factors ``q_0..q_L`` of Theorem 2.5 (2.4 for one hidden layer, 2.6
  for convolutions), computed backwards from ``q_L = 1`` (App. A.4), and the source widths; or the
  exact per-layer solution of the product inequality (``bound="exact"``).
* :func:`existence_probability`: ``P`` above for given source widths.
* :func:`simulate_existence`: Monte-Carlo with real ER masks drawn by the counter RNG (the bits
  ``sparsekit.prune`` would draw), checking every block condition.
* :func:`lower_bound_width`: Theorem 2.7 (and :func:`minimal_path_width`, the exact version of its
  argument). :func:`subset_sum_width` and :func:`subset_sum_check`:
  Lemma 2.1 and an exact empirical check of it.
* :func:`embed_weak_ticket`: the construction itself on a masked source MLP, returning a network
  that computes the target exactly; :func:`er_source` builds such a source with ``sparsekit.prune``.

Every function validates its arguments and raises ``ValueError``/``TypeError`` naming the problem.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import rng
from ._prune import validate_seed
from .attach import masked_parameters
from .errors import SparsekitError
from .models._common import check_positive_int

__all__ = [
    "TargetShape",
    "WidthPlan",
    "ExistenceEstimate",
    "SubsetSumCheck",
    "WeakTicketEmbedding",
    "EmbeddingError",
    "target_shape",
    "weak_ticket_widths",
    "existence_probability",
    "simulate_existence",
    "trial_seed",
    "mask_entries_per_trial",
    "lower_bound_width",
    "path_probability",
    "minimal_path_width",
    "subset_sum_width",
    "subset_sum_check",
    "er_source",
    "embed_weak_ticket",
]

BOUNDS = ("log", "exact")


class EmbeddingError(SparsekitError):
    """The weak-ticket construction cannot place a target weight: no representative edge exists.

    Attributes:
        layer: target layer ``l`` (1-based, as in the paper) of the weight that could not be placed.
        target_index: ``(i, j)``: row (target neuron of layer ``l``) and column (neuron of layer ``l-1``,
            or input ``j`` for ``l = 1``) of that weight.
        source_neuron: index of the source neuron (in source layer ``l``) that has no edge into the
            block of ``j``; None when the block itself is empty.
    """

    def __init__(self, message: str, layer: int, target_index: tuple[int, int], source_neuron: int | None):
        super().__init__(message)
        self.layer = layer
        self.target_index = target_index
        self.source_neuron = source_neuron


# --------------------------------------------------------------------------------------------------
# Target description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetShape:
    """What the theory needs to know about a target network ``f_T`` of depth ``L``.

    Attributes:
        input_dim: ``d``, the number of inputs (input channels ``c_0`` for a convolutional target).
        widths: ``n_{T,1}, ..., n_{T,L}`` (output channels ``c_l`` for convolutions).
        kernels: ``k_l``, filter elements per (output, input) pair: 1 for fully connected layers
            (a fully connected layer after flattening ``c`` channels of ``s`` positions has ``k = s``).
        nonzeros: ``m_{T,l}``, nonzero weights of layer ``l`` (Thm 2.6: filter elements).
        kinds: ``"linear"`` or ``"conv"`` per layer.
        patterns: per layer a bool tensor ``(n_l, n_{l-1}, k_l)`` of the nonzero weights, or None for
            a dense layer.
    """

    input_dim: int
    widths: tuple[int, ...]
    kernels: tuple[int, ...]
    nonzeros: tuple[int, ...]
    kinds: tuple[str, ...]
    patterns: tuple[torch.Tensor | None, ...] = field(repr=False, compare=False)

    @property
    def depth(self) -> int:
        """``L``, the number of weight layers."""
        return len(self.widths)

    def pattern(self, l: int) -> torch.Tensor:  # noqa: E741  (the paper's layer index)
        """Nonzero pattern of target layer ``l`` (1-based) as a bool tensor ``(n_l, n_{l-1}, k_l)``."""
        p = self.patterns[l - 1]
        if p is not None:
            return p
        prev = self.input_dim if l == 1 else self.widths[l - 2]
        return torch.ones(self.widths[l - 1], prev, self.kernels[l - 1], dtype=torch.bool)


def _weight_layers(model: nn.Module, what: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out.append((name, m))
        elif isinstance(m, (nn.modules.conv._ConvTransposeNd, nn.MultiheadAttention, nn.Embedding)):
            raise ValueError(f"{what}: {name} ({type(m).__name__}) is not covered by Theorems 2.4-2.6, which are "
                             "stated for fully connected and convolutional layers")
    if not out:
        raise ValueError(f"{what} has no Linear or Conv layer")
    return out


def target_shape(target: Sequence[int] | nn.Module | TargetShape) -> TargetShape:
    """The :class:`TargetShape` of ``target``: a width list ``(d, n_1, ..., n_L)`` or a module.

    A width list describes a dense fully connected target (``m_{T,l} = n_l n_{l-1}``). A module is read
    layer by layer (its ``Linear`` and ``Conv1d/2d/3d`` modules in registration order, which must be
    the order of the forward pass); ``m_{T,l}`` counts the nonzero weights, so a pruned target needs
    fewer copies. Consecutive layers must chain: a layer's inputs are the previous layer's outputs, or
    (a fully connected layer after a flatten) a multiple ``c * s`` of them.
    """
    if isinstance(target, TargetShape):
        return target
    if isinstance(target, nn.Module):
        return _shape_of_module(target)
    if isinstance(target, (str, bytes)) or not isinstance(target, Sequence):
        raise TypeError("target must be a sequence of widths (d, n_1, ..., n_L), e.g. (784, 300, 100, 10), or an "
                        f"nn.Module; got {type(target).__name__}")
    widths = [check_positive_int(w, f"target width {i}") for i, w in enumerate(target)]
    if len(widths) < 2:
        raise ValueError(f"target needs at least two widths (inputs and outputs, e.g. (784, 10)); got {list(target)}")
    d, ns = widths[0], tuple(widths[1:])
    prev = [d, *ns[:-1]]
    nonzeros = tuple(a * b for a, b in zip(ns, prev, strict=True))
    return TargetShape(d, ns, (1,) * len(ns), nonzeros, ("linear",) * len(ns), (None,) * len(ns))


def _shape_of_module(model: nn.Module) -> TargetShape:
    layers = _weight_layers(model, "target")
    widths, kernels, nonzeros, kinds, patterns = [], [], [], [], []
    d = None
    prev = None
    for name, m in layers:
        w = m.weight.detach()
        if w.is_meta:
            raise ValueError(f"target layer {name} is on the meta device; materialise the target to count its "
                             "nonzero weights, or pass its widths")
        if isinstance(m, nn.Linear):
            n_out, n_in = w.shape
            if prev is None:
                d, k = n_in, 1
            elif n_in == prev:
                k = 1
            elif n_in % prev == 0:
                k = n_in // prev  # flattened channels: k positions per channel
            else:
                raise ValueError(f"target layer {name} has {n_in} inputs, which is not a multiple of the "
                                 f"{prev} outputs of the layer before; the theory needs a chain of layers")
            pat = (w != 0).reshape(n_out, n_in // k, k)
            kinds.append("linear")
        else:
            if m.groups != 1:
                raise ValueError(f"target layer {name} is a grouped convolution (groups={m.groups}); Theorem 2.6 "
                                 "covers full convolutions only")
            n_out, n_in = w.shape[:2]
            if prev is None:
                d = n_in
            elif n_in != prev:
                raise ValueError(f"target layer {name} has {n_in} input channels but the layer before has {prev} "
                                 "outputs; the theory needs a chain of layers (residual branches are not covered "
                                 "by Theorems 2.4-2.6)")
            k = math.prod(w.shape[2:])
            pat = (w != 0).reshape(n_out, n_in, k)
            kinds.append("conv")
        widths.append(int(n_out))
        kernels.append(int(k))
        nonzeros.append(int(pat.sum()))
        patterns.append(pat.cpu())
        prev = int(n_out)
    assert d is not None
    return TargetShape(int(d), tuple(widths), tuple(kernels), tuple(nonzeros), tuple(kinds), tuple(patterns))


def _densities(densities: object, depth: int) -> tuple[float, ...]:
    """``p_1..p_L`` from a number or a sequence of ``L`` numbers, each in (0, 1]."""
    if isinstance(densities, (int, float, np.floating)) and not isinstance(densities, bool):
        values = [densities] * depth
    elif isinstance(densities, Sequence) and not isinstance(densities, (str, bytes)):
        values = list(densities)
        if len(values) != depth:
            raise ValueError(f"densities must be one number or L = {depth} numbers p_1..p_L (one per target layer: "
                             f"the density of source layer l = 1..L); got {len(values)}")
    else:
        raise TypeError(f"densities must be a number in (0, 1] or a sequence of them, got {type(densities).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) \
                or not 0.0 < float(v) <= 1.0:
            raise ValueError(f"density p_{i + 1} must be a number in (0, 1], got {v!r}")
        out.append(float(v))
    return tuple(out)


def _delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)) or not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta (the allowed failure probability) must be in (0, 1), got {delta!r}")
    return float(delta)


# --------------------------------------------------------------------------------------------------
# Theorems 2.4-2.6: widths
# --------------------------------------------------------------------------------------------------


def _ceil(v: float) -> int:
    """Smallest integer >= v, forgiving float noise of a few ulps (so an exact 12 is not 13)."""
    return max(1, math.ceil(v - 1e-9 * max(1.0, abs(v))))


def _copies_needed(p: float, m: int, q_next: int, depth: int, delta: float, bound: str) -> int:
    """``q_{l-1}`` for layer ``l`` with density ``p``, ``m`` nonzeros and ``q_l = q_next`` copies."""
    if m == 0 or p >= 1.0:
        return 1  # nothing to place, or every edge exists
    n = depth * m * q_next
    if bound == "log":  # Thm 2.5: q_{l-1} >= log(L m q_l / delta) / log(1 / (1 - p_l))
        return _ceil(math.log(n / delta) / -math.log1p(-p))
    # exact: (1 - (1-p)^q)^(m q_l) >= (1-delta)^(1/L)  <=>  q >= log(1 - (1-delta)^(1/(L m q_l))) / log(1-p)
    t = -math.expm1(math.log1p(-delta) / n)
    return _ceil(math.log(t) / math.log1p(-p))


def _log_layer_probability(p: float, q_prev: int, m: int, q: int) -> float:
    """``log (1 - (1 - p)^{q_prev})^{m q}``, the log-probability that layer ``l`` can be built."""
    if m == 0 or q == 0:
        return 0.0
    if p >= 1.0:
        return 0.0
    miss = math.exp(q_prev * math.log1p(-p))  # (1-p)^q_prev
    if miss >= 1.0:
        return -math.inf
    return m * q * math.log1p(-miss)


@dataclass(frozen=True)
class WidthPlan:
    """Source widths for a weak ticket (Theorems 2.4-2.6); see :func:`weak_ticket_widths`.

    Attributes:
        target: the :class:`TargetShape`.
        densities: ``p_1..p_L``.
        delta: allowed failure probability.
        bound: ``"log"`` (the theorem) or ``"exact"`` (the product inequality solved per layer).
        theorem: ``"2.4"`` (one hidden layer), ``"2.5"`` (fully connected) or ``"2.6"`` (convolutional).
        copies: ``q_0, ..., q_L`` (``q_L = 1``).
        source_widths: ``n_{S,0} = q_0 d`` and ``n_{S,l} = q_l n_{T,l}`` (channels for convolutions).
        probability: :func:`existence_probability` of these widths (at least ``1 - delta``).
        layer_probabilities: its factor per layer ``l = 1..L``.
    """

    target: TargetShape
    densities: tuple[float, ...]
    delta: float
    bound: str
    theorem: str
    copies: tuple[int, ...]
    source_widths: tuple[int, ...]
    probability: float
    layer_probabilities: tuple[float, ...]

    @property
    def source_parameters(self) -> tuple[int, ...]:
        """Weights of each source layer ``0..L`` before masking (layer 0: univariate, one input each, so
        ``n_{S,0} x d``; 1x1 filters for a convolutional target)."""
        t, n = self.target, self.source_widths
        return (n[0] * t.input_dim, *(n[l] * n[l - 1] * t.kernels[l - 1] for l in range(1, t.depth + 1)))

    @property
    def expected_er_parameters(self) -> tuple[float, ...]:
        """Expected unmasked weights of source layers ``1..L``: ``p_l`` times :attr:`source_parameters`."""
        return tuple(p * s for p, s in zip(self.densities, self.source_parameters[1:], strict=True))

    @property
    def ticket_parameters(self) -> tuple[int, ...]:
        """Weights the weak ticket keeps: ``n_{S,0}`` (one per univariate neuron) and ``m_{T,l} q_l``."""
        return (self.source_widths[0], *(m * q for m, q in zip(self.target.nonzeros, self.copies[1:], strict=True)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        t = self.target
        return {
            "theorem": self.theorem, "bound": self.bound, "delta": self.delta,
            "target": {"input_dim": t.input_dim, "widths": list(t.widths), "kernels": list(t.kernels),
                       "nonzeros": list(t.nonzeros), "kinds": list(t.kinds)},
            "densities": list(self.densities), "copies": list(self.copies),
            "source_widths": list(self.source_widths), "source_parameters": list(self.source_parameters),
            "expected_er_parameters": list(self.expected_er_parameters),
            "ticket_parameters": list(self.ticket_parameters),
            "existence_probability": self.probability, "layer_probabilities": list(self.layer_probabilities),
        }

    def table(self) -> str:
        """A plain-text table: one row per source layer."""
        t = self.target
        rows = [("layer", "p_l", "q_l", "target n", "source n", "source weights", "ER weights (exp.)",
                 "ticket weights", "P(layer)")]
        rows.append(("0 (univariate)", "-", str(self.copies[0]), str(t.input_dim), str(self.source_widths[0]),
                     f"{self.source_parameters[0]:,}", "-", f"{self.ticket_parameters[0]:,}", "-"))
        for l in range(1, t.depth + 1):  # noqa: E741
            rows.append((str(l), f"{self.densities[l - 1]:g}", str(self.copies[l]), str(t.widths[l - 1]),
                         str(self.source_widths[l]), f"{self.source_parameters[l]:,}",
                         f"{self.expected_er_parameters[l - 1]:,.0f}", f"{self.ticket_parameters[l]:,}",
                         f"{self.layer_probabilities[l - 1]:.6f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def weak_ticket_widths(
    target: Sequence[int] | nn.Module | TargetShape,
    densities: float | Sequence[float],
    delta: float = 0.1,
    *,
    bound: str = "log",
) -> WidthPlan:
    """Source widths with which an ER source contains a weak ticket of ``target`` w.p. ``>= 1 - delta``.

    Theorem 2.5 (App. A.4), computed backwards from ``q_L = 1``::

        q_{l-1} = ceil( log(L m_{T,l} q_l / delta) / log(1 / (1 - p_l)) ),   l = L, ..., 1,

    then ``n_{S,0} = q_0 d`` and ``n_{S,l} = q_l n_{T,l}``. A target with one hidden layer (``L = 2``) is
    Theorem 2.4 (the ``2 m / delta`` there is ``L m / delta``); convolutional layers are Theorem 2.6,
    with ``m_{T,l}`` counting filter elements and the widths counting channels. Every ``q_l`` uses the
    integer ``q_{l+1}`` actually built.

    ``bound="exact"`` drops the last relaxation of App. A.4 (``1 - (1-delta)^{1/n} >= delta / n``) and
    solves the per-layer condition ``(1 - (1 - p_l)^{q_{l-1}})^{m_{T,l} q_l} >= (1 - delta)^{1/L}`` exactly,
    which never needs more copies than the log bound. Both split ``delta`` equally over the layers as
    the proof does; the realised probability (``.probability``) is usually well above ``1 - delta``.

    Args:
        target: widths ``(d, n_1, ..., n_L)`` of a dense fully connected target, or the target module
            (see :func:`target_shape`).
        densities: ``p_1..p_L`` (one number: the same in every layer). The density ``p_0`` of the
            univariate source layer 0 does not enter: the paper assumes flow preservation there.
        delta: allowed failure probability in (0, 1).
        bound: ``"log"`` (the theorem) or ``"exact"``.

    Returns:
        A :class:`WidthPlan`; ``.table()`` prints it.

    Example:
        >>> plan = weak_ticket_widths((784, 300, 100, 10), 0.1, 0.1)
        >>> plan.copies, plan.source_widths
        ((199, 174, 98, 1), (156016, 52200, 9800, 10))
    """
    shape = target_shape(target)
    ps = _densities(densities, shape.depth)
    delta = _delta(delta)
    if bound not in BOUNDS:
        raise ValueError(f"bound must be 'log' (Theorem 2.5) or 'exact' (the product inequality solved per layer), "
                         f"got {bound!r}")
    depth = shape.depth
    q = [0] * (depth + 1)
    q[depth] = 1
    for l in range(depth, 0, -1):  # noqa: E741
        q[l - 1] = _copies_needed(ps[l - 1], shape.nonzeros[l - 1], q[l], depth, delta, bound)
    widths = (q[0] * shape.input_dim, *(q[l] * shape.widths[l - 1] for l in range(1, depth + 1)))
    if "conv" in shape.kinds:
        theorem = "2.6"
    else:
        theorem = "2.4" if depth == 2 else "2.5"
    logs = [_log_layer_probability(ps[l - 1], q[l - 1], shape.nonzeros[l - 1], q[l]) for l in range(1, depth + 1)]
    return WidthPlan(shape, ps, delta, bound, theorem, tuple(q), widths, math.exp(sum(logs)),
                     tuple(math.exp(v) for v in logs))


def _copies_of(shape: TargetShape, source_widths: object) -> tuple[int, ...]:
    """``q_0..q_L`` of given source widths: ``n_{S,0} // d`` and ``n_{S,l} // n_{T,l}``; ``n_{S,L} = n_{T,L}``."""
    if isinstance(source_widths, (str, bytes)) or not isinstance(source_widths, Sequence):
        raise TypeError(f"source_widths must be a sequence of L + 1 = {shape.depth + 1} widths n_S,0..n_S,L, got "
                        f"{type(source_widths).__name__}")
    if len(source_widths) != shape.depth + 1:
        raise ValueError(f"source_widths must have L + 1 = {shape.depth + 1} entries n_S,0..n_S,L (the source has "
                         f"one layer more than the target: the univariate layer 0); got {len(source_widths)}")
    ns = [check_positive_int(w, f"source width n_S,{i}") for i, w in enumerate(source_widths)]
    targets = (shape.input_dim, *shape.widths)
    for l, (n, t) in enumerate(zip(ns, targets, strict=True)):  # noqa: E741
        if n < t:
            what = "inputs (one univariate block per input)" if l == 0 else f"neurons of target layer {l}"
            raise ValueError(f"source width n_S,{l} = {n} is below the {t} {what}: the construction needs at least "
                             "one copy of each")
    if ns[-1] != targets[-1]:
        raise ValueError(f"the output layer must match the target (q_L = 1): n_S,{shape.depth} = {ns[-1]} but the "
                         f"target has {targets[-1]} outputs")
    return tuple(n // t for n, t in zip(ns, targets, strict=True))


def existence_probability(
    target: Sequence[int] | nn.Module | TargetShape,
    source_widths: Sequence[int],
    densities: float | Sequence[float],
    *,
    per_layer: bool = False,
) -> float | tuple[float, ...]:
    """Probability that the weak-ticket construction finds every representative edge (App. A.3-A.4).

    ``P = prod_{l=1..L} (1 - (1 - p_l)^{q_{l-1}})^{m_{T,l} q_l}`` with ``q_0 = n_{S,0} // d`` and
    ``q_l = n_{S,l} // n_{T,l}``: every one of the ``q_l`` copies of a target neuron ``i`` needs an edge into
    the block of ``q_{l-1}`` copies of ``j`` for every nonzero ``w_{T,ij}``, and these events are
    independent. Source neurons beyond ``q_l n_{T,l}`` are left unused by the construction. Source layer
    0 is assumed univariate with blocks of ``q_0`` (the paper's flow-preservation assumption).

    Args:
        target: widths ``(d, n_1, ..., n_L)`` or the target module.
        source_widths: ``n_{S,0}, ..., n_{S,L}`` with ``n_{S,L} = n_{T,L}``.
        densities: ``p_1..p_L`` or one number.
        per_layer: return the factor of each layer instead of the product.
    """
    shape = target_shape(target)
    ps = _densities(densities, shape.depth)
    q = _copies_of(shape, source_widths)
    logs = [_log_layer_probability(ps[l - 1], q[l - 1], shape.nonzeros[l - 1], q[l])
            for l in range(1, shape.depth + 1)]
    if per_layer:
        return tuple(math.exp(v) for v in logs)
    return math.exp(sum(logs))


# --------------------------------------------------------------------------------------------------
# Monte-Carlo with real masks
# --------------------------------------------------------------------------------------------------


def trial_seed(seed: int, trial: int) -> int:
    """Seed of the source network drawn in trial ``trial`` of :func:`simulate_existence`.

    ``er_source(widths, densities, seed=trial_seed(seed, t), flow=None)`` (``sparsekit.prune`` with
    ``er-layerwise`` on a :func:`sparsekit.models.mlp`, whose layer ``l`` is the parameter
    ``f"{2l+1}.weight"``) draws exactly the masks of trial ``t``; with a dense layer 0 the construction
    of :func:`embed_weak_ticket` succeeds on it exactly when the trial succeeds (tested).
    """
    return rng.mix64(rng.mix64(seed) ^ rng.mix64((trial + 1) * rng.GAMMA))


def source_fqn(layer: int) -> str:
    """Parameter name of source layer ``layer`` in a :func:`sparsekit.models.mlp` source network."""
    return f"{2 * layer + 1}.weight"


def _binomial_stderr(rate: float, n: int) -> float:
    """``sqrt(r (1 - r) / n)`` with ``r`` kept at least ``1/n`` away from 0 and 1 (a positive error for a run
    without failures or without successes)."""
    r = min(max(rate, 1.0 / n), 1.0 - 1.0 / n) if n > 1 else 0.5
    return math.sqrt(r * (1.0 - r) / n)


@dataclass(frozen=True)
class ExistenceEstimate:
    """Result of :func:`simulate_existence`.

    Attributes:
        probability: fraction of trials in which every representative edge exists.
        trials, successes: counts.
        layer_failures: per layer ``l = 1..L``, the trials in which layer ``l`` could not be built.
        analytic: :func:`existence_probability` of the same widths.
        layer_analytic: its per-layer factors.
        mask_entries_per_trial: mask entries drawn per trial.
        seconds: wall time.
    """

    probability: float
    trials: int
    successes: int
    layer_failures: tuple[int, ...]
    analytic: float
    layer_analytic: tuple[float, ...]
    mask_entries_per_trial: int
    seconds: float

    @property
    def stderr(self) -> float:
        """Binomial standard error of :attr:`probability` (the estimate kept at least ``1/trials`` away from
        0 and 1, so that a run without failures still gets a positive error)."""
        return _binomial_stderr(self.probability, self.trials)

    def agrees(self, k: float = 3.0) -> bool:
        """Whether the estimate is within ``k`` standard errors of the analytic value, the error taken at
        the analytic probability (the null hypothesis)."""
        a = self.analytic
        return abs(self.probability - a) <= k * math.sqrt(max(a * (1.0 - a), 1e-300) / self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {"probability": self.probability, "stderr": self.stderr, "trials": self.trials,
                "successes": self.successes, "layer_failures": list(self.layer_failures),
                "analytic": self.analytic, "layer_analytic": list(self.layer_analytic),
                "mask_entries_per_trial": self.mask_entries_per_trial, "seconds": self.seconds}


_CHUNK_LANES = 2 * rng.DEFAULT_CHUNK_WORDS  # mask entries per chunk: one RNG scratch buffer


def _layer_missing(key: int, p: float, rows: int, q_row: int, n_prev: int, q_prev: int, n_prev_t: int, k: int,
                   pattern: torch.Tensor | None, device: torch.device) -> bool:
    """Whether some needed (copy, block) pair of one source layer has no unmasked edge.

    The layer's mask is the Bernoulli(p) stream ``key`` over the flattened weight ``(rows_all, n_prev, k)``
    (exactly what :func:`sparsekit.sampling.draw_mask` draws); only the first ``rows`` rows (the copies)
    are read, in chunks.
    """
    T = rng.threshold(p)
    if T >= 1 << 32:
        return False
    t_signed = T - (1 << 31)
    ncols = n_prev * k
    chunk_rows = max(1, _CHUNK_LANES // ncols)
    for r0 in range(0, rows, chunk_rows):
        r1 = min(rows, r0 + chunk_rows)
        lanes = rng.lane_range(key, r0 * ncols, (r1 - r0) * ncols, device=device).view(r1 - r0, n_prev, k)
        lanes = lanes[:, : n_prev_t * q_prev]
        if k == 1:  # a block holds an edge iff its smallest lane is below the threshold
            blocks = lanes.reshape(r1 - r0, n_prev_t, q_prev).amin(dim=2).lt(t_signed).unsqueeze(2)
        else:
            blocks = lanes.reshape(r1 - r0, n_prev_t, q_prev, k).amin(dim=2).lt(t_signed)
        if pattern is None:
            if not bool(blocks.all()):
                return True
        else:
            need = pattern[torch.arange(r0, r1, device=device) // q_row]
            if bool((need & ~blocks).any()):
                return True
    return False


def _layer0(d: int, n0: int) -> Any:
    """The :class:`~sparsekit.layers.Layer` of source layer 0 (``1.weight`` of a meta-device mlp), for flow repair."""
    from .layers import find_layers

    with torch.device("meta"):
        probe = nn.Sequential(nn.Flatten(), nn.Linear(d, n0))
    return find_layers(probe)[0]


def _first_layer_blocks(key0: int, p0: float, flow: str | None, seed: int, layer0: Any) -> torch.Tensor:
    """Input copied by each neuron of source layer 0, as :func:`embed_weak_ticket` assigns them, for the
    layer-0 mask ``sparsekit.prune`` draws (Bernoulli ``p0``; flow repair if ``flow``)."""
    from .flow import repair_flow

    n0, d = layer0.shape
    mask = rng.bernoulli_flat(key0, n0 * d, p0).view(n0, d)
    if flow is not None:
        repair_flow(layer0, mask, p0, seed, flow)
    return _assign_inputs(mask, d)


def _layer1_missing(key: int, p: float, rows: int, q_row: int, n0: int, input_of: torch.Tensor, d: int,
                    pattern: torch.Tensor | None, device: torch.device) -> bool:
    """:func:`_layer_missing` for source layer 1 when the univariate blocks of layer 0 are irregular."""
    T = rng.threshold(p)
    t_signed = T - (1 << 31)
    input_of = input_of.to(device)
    used = input_of >= 0
    index = input_of.clamp(min=0)
    chunk_rows = max(1, _CHUNK_LANES // n0)
    for r0 in range(0, rows, chunk_rows):
        r1 = min(rows, r0 + chunk_rows)
        if T >= 1 << 32:  # dense layer 1: every edge exists
            kept = used.expand(r1 - r0, -1)
        else:
            kept = rng.lane_range(key, r0 * n0, (r1 - r0) * n0, device=device).view(r1 - r0, n0).lt(t_signed) & used
        blocks = torch.zeros(r1 - r0, d, dtype=torch.uint8, device=device)
        blocks.scatter_reduce_(1, index.expand(r1 - r0, -1), kept.to(torch.uint8), reduce="amax")
        need = (torch.ones(r1 - r0, d, dtype=torch.bool, device=device) if pattern is None
                else pattern[torch.arange(r0, r1, device=device) // q_row][:, :, 0])
        if bool((need & (blocks == 0)).any()):
            return True
    return False


def mask_entries_per_trial(target: Sequence[int] | nn.Module | TargetShape, source_widths: Sequence[int]) -> int:
    """Mask entries :func:`simulate_existence` draws per trial: ``sum_l q_l n_{T,l} n_{S,l-1} k_l`` (the rows of
    the copies, full width)."""
    shape = target_shape(target)
    q = _copies_of(shape, source_widths)
    return sum(q[l] * shape.widths[l - 1] * int(source_widths[l - 1]) * shape.kernels[l - 1]
               for l in range(1, shape.depth + 1))


def simulate_existence(
    target: Sequence[int] | nn.Module | TargetShape,
    source_widths: Sequence[int],
    densities: float | Sequence[float],
    trials: int = 1000,
    seed: int = 0,
    *,
    input_density: float | None = None,
    flow: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> ExistenceEstimate:
    """Monte-Carlo estimate of :func:`existence_probability` with real ER masks.

    Trial ``t`` draws the masks of source layers ``1..L`` with the counter RNG exactly as
    ``sparsekit.prune`` draws them (Bernoulli ``p_l`` per entry, seed :func:`trial_seed`, no flow
    repair) and checks, block by block, that every copy of every target neuron has an unmasked edge
    into the block of each of its target inputs. Layer 0 is the univariate layer the paper assumes
    (blocks of ``q_0`` neurons per input). Each trial draws every mask entry of the copies' rows,
    ``sum_l q_l n_{T,l} n_{S,l-1} k_l`` of them (``.mask_entries_per_trial``), vectorised in chunks at about
    0.5 G entries/s per CPU core pair; ``device="cuda"`` draws the same bits on a GPU.

    With ``input_density=p_0`` the univariate layer is not assumed but drawn too (Bernoulli ``p_0``,
    flow repair if ``flow="repair"``, as :func:`er_source` draws it), its neurons are assigned to inputs
    as :func:`embed_weak_ticket` does, and layer 1 is checked against those (uneven) blocks. This tests
    App. A.3's remark that ``p_0`` can be arbitrary as long as flow is preserved; there is no analytic
    value for it, so ``.analytic`` stays the paper's.

    Args:
        target, source_widths, densities: as for :func:`existence_probability`.
        trials: number of independent source networks.
        seed: base seed; trial ``t`` uses :func:`trial_seed` ``(seed, t)``.
        input_density: ``p_0`` of source layer 0 (fully connected targets), or None for the paper's
            assumption (univariate blocks of ``q_0`` neurons per input).
        flow: flow repair of layer 0 when ``input_density`` is given: None or ``"repair"``. Layers
            ``1..L`` are drawn without repair.
        device: where to draw the masks.
        progress: show a progress bar of the trials on stderr; None (default): only when stderr is a terminal.

    Returns:
        An :class:`ExistenceEstimate`; ``.agrees()`` compares it with the analytic value.
    """
    shape = target_shape(target)
    ps = _densities(densities, shape.depth)
    q = _copies_of(shape, source_widths)
    trials = check_positive_int(trials, "trials")
    seed = validate_seed(seed)
    device = torch.device(device)
    ns = [int(w) for w in source_widths]
    depth = shape.depth
    if input_density is not None:
        input_density = _prob(input_density, "input_density", closed=True)
        if shape.kinds[0] != "linear" or shape.kernels[0] != 1:
            raise ValueError("input_density is supported for fully connected targets (the univariate layer of a "
                             "convolutional target is not drawn)")
    if flow not in (None, "repair"):
        raise ValueError(f"flow must be None or 'repair' (applied to layer 0 with input_density), got {flow!r}")
    patterns = [None if shape.patterns[l] is None else shape.patterns[l].to(device) for l in range(depth)]
    layer0 = _layer0(shape.input_dim, ns[0]) if input_density is not None else None
    t0 = time.perf_counter()
    fails = [0] * depth
    successes = 0
    entries = mask_entries_per_trial(shape, ns)
    bar = _trial_bar(trials, progress)
    for t in range(trials):
        if bar is not None:
            bar.update(0, completed=t)
        s = trial_seed(seed, t)
        ok = True
        for l in range(1, depth + 1):  # noqa: E741
            key = rng.stream_key(s, source_fqn(l), "mask")
            n_prev_t = shape.input_dim if l == 1 else shape.widths[l - 2]
            if l == 1 and input_density is not None:
                input_of = _first_layer_blocks(rng.stream_key(s, source_fqn(0), "mask"), input_density, flow, s,
                                               layer0)
                missing = _layer1_missing(key, ps[0], q[1] * shape.widths[0], q[1], ns[0], input_of,
                                          shape.input_dim, patterns[0], device)
            else:
                missing = _layer_missing(key, ps[l - 1], q[l] * shape.widths[l - 1], q[l], ns[l - 1], q[l - 1],
                                         n_prev_t, shape.kernels[l - 1], patterns[l - 1], device)
            if missing:
                fails[l - 1] += 1
                ok = False
        successes += ok
    if bar is not None:
        bar.stop()
    per_layer = existence_probability(shape, ns, ps, per_layer=True)
    assert isinstance(per_layer, tuple)
    return ExistenceEstimate(successes / trials, trials, successes, tuple(fails), math.prod(per_layer), per_layer,
                             entries, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# Theorem 2.7 and Lemma 2.1
# --------------------------------------------------------------------------------------------------


def _trial_bar(trials: int, progress: bool | None) -> Any:
    """A started rich progress bar over ``trials`` on stderr (``progress=None``: only if stderr is a terminal)."""
    import sys

    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not progress:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"),
                   TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True)
    bar.add_task("trials", total=trials)
    bar.start()
    return bar


def _prob(value: object, name: str, *, closed: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (0.0 < float(value) < 1.0 or (closed and float(value) == 1.0)):
        return float(value)
    interval = "(0, 1]" if closed else "(0, 1)"
    raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def lower_bound_width(density: float, d: int, delta: float) -> float:
    """Theorem 2.7: below this width a 1-hidden-layer ER(p) source misses some univariate target.

    ``n_{S,1} < log(1 / (1 - (1 - delta)^{1/d})) / log(1 / (1 - p))``: a target ``phi(w^T x + b)`` with
    every ``w_j != 0`` needs a path from each of the ``d`` inputs through the hidden layer to the output.
    Even if every hidden neuron reached the output, each input would still need one of its ``n_{S,1}``
    edges into the hidden layer, independently per input: probability ``(1 - (1 - p)^{n_{S,1}})^d``, which
    is below ``1 - delta`` for narrower sources.

    Note on App. A.6: the proof multiplies the per-input path probabilities ``1 - (1 - p^2)^n`` as if
    independent and states a sharper bound with ``log(1 / (1 - p^2))``. The paths of different inputs
    share the hidden-to-output edges, so they are positively correlated and the product is *not* an
    upper bound (p = 1/2, d = 4, delta = 1/2: the sharper form claims failure below 6.39 neurons, yet 6
    neurons succeed with probability 0.5415). The theorem as stated holds by the argument above;
    :func:`path_probability` and :func:`minimal_path_width` give the exact values.

    Args:
        density: ``p`` in (0, 1).
        d: input dimension, a positive integer.
        delta: in (0, 1).

    Returns:
        The bound as a float; every integer width below it fails with probability above ``delta``.
    """
    p = _prob(density, "density")
    d = check_positive_int(d, "d")
    delta = _delta(delta)
    return -math.log(-math.expm1(math.log1p(-delta) / d)) / -math.log1p(-p)


def path_probability(width: int, density: float, d: int) -> float:
    """Probability that every input of a 1-hidden-layer ER(p) network has a path to its single output.

    Exactly ``sum_k Bin(k; n, p) (1 - (1 - p)^k)^d``: ``k`` hidden neurons keep their output edge, and each
    input then needs an edge to one of them, independently per input (App. A.6's setting, without the
    independence assumption across inputs; see :func:`lower_bound_width`).
    """
    n = int(width) if isinstance(width, (int, np.integer)) and not isinstance(width, bool) and width >= 0 else -1
    if n < 0:
        raise ValueError(f"width must be a non-negative integer, got {width!r}")
    p = _prob(density, "density", closed=True)
    d = check_positive_int(d, "d")
    if p == 1.0:
        return 1.0 if n >= 1 else 0.0
    k = np.arange(n + 1, dtype=np.float64)
    log_binom = (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in range(n + 1)])
                 + k * math.log(p) + (n - k) * math.log1p(-p))
    miss = np.exp(k * math.log1p(-p))
    with np.errstate(divide="ignore"):
        log_cover = d * np.log1p(-miss)
    return float(np.exp(log_binom + log_cover).sum())


def minimal_path_width(density: float, d: int, delta: float) -> int:
    """Smallest hidden width with :func:`path_probability` ``>= 1 - delta``: a necessary width for a
    1-hidden-layer ER(p) source to represent every univariate target (sharper than Theorem 2.7)."""
    p = _prob(density, "density")
    d = check_positive_int(d, "d")
    delta = _delta(delta)
    lo, hi = 0, max(1, math.ceil(lower_bound_width(p, d, delta)))
    while path_probability(hi, p, d) < 1.0 - delta:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # path_probability grows with the width: more hidden neurons, more paths
        mid = (lo + hi) // 2
        if path_probability(mid, p, d) >= 1.0 - delta:
            hi = mid
        else:
            lo = mid
    return hi


def subset_sum_width(density: float, eps: float, delta: float, C: float = 1.0) -> int:
    """Lemma 2.1: base-set size for subset-sum approximation with Bernoulli(p)-masked uniforms.

    ``n >= C log(1 / min(delta, eps)) / log(1 / (1 - p))``. ``C`` is the lemma's generic constant (it
    comes from Lueker's bound and is not known in closed form); :func:`subset_sum_check` measures what
    a given ``n`` achieves. The factor ``1 / log(1 / (1 - p))`` is the simplified one of the lemma, valid
    for ``p < 1`` (the proof's exact factor is ``1 / log(1 / (1 - p (1 - e^{-b})))``, App. A.2).

    Returns:
        The smallest integer ``n`` satisfying the inequality.
    """
    p = _prob(density, "density")
    eps = _prob(eps, "eps")
    delta = _delta(delta)
    if isinstance(C, bool) or not isinstance(C, (int, float, np.floating)) or not math.isfinite(C) or C <= 0:
        raise ValueError(f"C (the lemma's constant) must be a positive number, got {C!r}")
    return _ceil(C * math.log(1.0 / min(delta, eps)) / -math.log1p(-p))


@dataclass(frozen=True)
class SubsetSumCheck:
    """Result of :func:`subset_sum_check`.

    Attributes:
        success_rate: fraction of trials in which some subset of the kept variables sums to within
            ``eps`` of the target ``z``.
        trials, successes, n, density, eps: as given; ``z`` is None when drawn per trial.
        mean_kept: average number of unmasked variables ``K ~ Bin(n, p)``.
    """

    success_rate: float
    trials: int
    successes: int
    n: int
    density: float
    eps: float
    z: float | None
    mean_kept: float

    @property
    def stderr(self) -> float:
        """Binomial standard error of :attr:`success_rate` (at least that of one success in ``trials``)."""
        return _binomial_stderr(self.success_rate, self.trials)


def _subset_sums(values: np.ndarray) -> np.ndarray:
    sums = np.zeros(1)
    for v in values:
        sums = np.concatenate([sums, sums + v])
    return sums


def _closest_subset_error(values: np.ndarray, z: float) -> float:
    """``min_I |z - sum_{i in I} values_i|`` over all subsets (meet in the middle: ``O(2^{K/2} K)``)."""
    half = len(values) // 2
    a = _subset_sums(values[:half])
    b = np.sort(_subset_sums(values[half:]))
    need = z - a
    idx = np.clip(np.searchsorted(b, need), 1, len(b) - 1) if len(b) > 1 else np.zeros(len(a), dtype=int)
    err = np.abs(need - b[idx])
    if len(b) > 1:
        err = np.minimum(err, np.abs(need - b[idx - 1]))
    return float(err.min())


MAX_SUBSET_N = 44


def _uniforms(key: int, count: int) -> np.ndarray:
    """``count`` doubles in [0, 1) from the counter RNG stream ``key`` (53 bits of each word)."""
    w = rng.words(key, 0, count).numpy().view(np.uint64)
    return (w >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def subset_sum_check(
    n: int,
    density: float,
    eps: float,
    *,
    trials: int = 1000,
    z: float | None = None,
    seed: int = 0,
) -> SubsetSumCheck:
    """Empirical check of Lemma 2.1: how often masked uniforms can approximate a target within ``eps``.

    Each trial draws ``X_1..X_n ~ U([-1, 1])`` and ``M_1..M_n ~ Ber(p)`` from the counter RNG (trial ``t``,
    variable ``i``: the same ``X_i`` and mask lane for every ``n`` and ``p``, so the success of a trial can
    only grow with ``n`` and ``p``) and a target ``z`` (``z`` given, or ``U([-1, 1])`` per trial), then
    searches all subsets of the unmasked variables exactly (meet in the middle), empty set included.

    Args:
        n: base-set size, at most 44 (the exact search enumerates ``2^{K/2}`` sums per half).
        density: ``p`` in (0, 1].
        eps: approximation tolerance in (0, 1).
        trials: number of independent draws.
        z: fixed target in [-1, 1], or None for a uniform target per trial.
        seed: counter-RNG seed.
    """
    n = check_positive_int(n, "n")
    if n > MAX_SUBSET_N:
        raise ValueError(f"n must be at most {MAX_SUBSET_N} for the exact subset search (2^(n/2) sums per half); "
                         f"got {n}")
    p = _prob(density, "density", closed=True)
    eps = _prob(eps, "eps")
    trials = check_positive_int(trials, "trials")
    if z is not None:
        if isinstance(z, bool) or not isinstance(z, (int, float, np.floating)) or not -1.0 <= float(z) <= 1.0:
            raise ValueError(f"z must be a number in [-1, 1] (Lemma 2.1's targets), or None, got {z!r}")
        z = float(z)
    seed = validate_seed(seed)
    t_signed = rng.threshold(p) - (1 << 31)
    successes = 0
    kept_total = 0
    for t in range(trials):
        s = trial_seed(seed, t)
        x = _uniforms(rng.stream_key(s, "x", "theory.subset-sum"), MAX_SUBSET_N)[:n] * 2.0 - 1.0
        lanes = rng.lanes_at(rng.stream_key(s, "m", "theory.subset-sum"), torch.arange(n)).numpy()
        kept = x[lanes < t_signed]
        target = z if z is not None else float(_uniforms(rng.stream_key(s, "z", "theory.subset-sum"), 1)[0] * 2 - 1)
        kept_total += len(kept)
        successes += _closest_subset_error(kept, target) <= eps
    return SubsetSumCheck(successes / trials, trials, successes, n, p, eps, z, kept_total / trials)


# --------------------------------------------------------------------------------------------------
# The constructive embedding (App. A.3-A.4)
# --------------------------------------------------------------------------------------------------


_PASSIVE = (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)


def _relu_mlp(model: nn.Module, what: str) -> list[nn.Linear]:
    """The Linear layers of a plain ReLU MLP (Linear, ReLU, Linear, ..., Linear), validated."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be an nn.Module (a ReLU MLP such as sparsekit.models.mlp builds), got "
                        f"{type(model).__name__}")
    seq: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    linears: list[nn.Linear] = []
    relu_since = True
    for name, m in seq:
        if isinstance(m, nn.Linear):
            if linears and not relu_since:
                raise ValueError(f"{what}: {name} follows another Linear without a ReLU in between; the construction "
                                 "needs Linear, ReLU, Linear, ..., Linear")
            linears.append(m)
            relu_since = False
        elif isinstance(m, nn.ReLU):
            if not linears or relu_since:
                raise ValueError(f"{what}: the ReLU {name} is not between two Linear layers")
            relu_since = True
        elif isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            if isinstance(m, nn.Flatten) and linears:
                raise ValueError(f"{what}: Flatten ({name}) may only come before the first Linear")
        else:
            raise ValueError(f"{what} must be a plain ReLU MLP (Linear and ReLU modules, as sparsekit.models.mlp "
                             f"builds with activation='relu'); found {type(m).__name__} at {name!r}")
    if not linears:
        raise ValueError(f"{what} has no Linear layer")
    if relu_since:
        raise ValueError(f"{what} ends with a ReLU; the construction's output layer is linear (as in the paper)")
    return linears


def _masks_of(model: nn.Module, layers: list[nn.Linear]) -> list[torch.Tensor]:
    """The sparsekit mask of each layer's weight (all ones for an unmasked weight), on the CPU."""
    masks = {id(p): mask for _, p, mask in masked_parameters(model)}
    return [masks[id(m.weight)].cpu() if id(m.weight) in masks else torch.ones(m.weight.shape, dtype=torch.bool)
            for m in layers]


def _bounds(input_bounds: object, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(input_bounds, (tuple, list)) or len(input_bounds) != 2:
        raise TypeError("input_bounds must be a pair (low, high) of numbers or of tensors with one entry per input, "
                        f"e.g. (-1.0, 1.0); got {input_bounds!r}")
    lo, hi = (torch.as_tensor(b, dtype=torch.float64).flatten() for b in input_bounds)
    lo, hi = (b.expand(d).clone() if b.numel() == 1 else b for b in (lo, hi))
    if lo.numel() != d or hi.numel() != d:
        raise ValueError(f"input_bounds must have 1 or d = {d} entries per side, got {lo.numel()} and {hi.numel()}")
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()) or bool((lo > hi).any()):
        raise ValueError("input_bounds must be finite with low <= high for every input")
    return lo, hi


@dataclass
class WeakTicketEmbedding:
    """Result of :func:`embed_weak_ticket`.

    Attributes:
        model: the source network, its weights set to the weak ticket (the same object as ``source``).
        ticket_masks: ``{parameter name: bool mask}`` of the weights the ticket uses, ``S_LT``, a subset
            of the ER mask ``S_ER``.
        copies: ``q_0..q_L``, copies per target neuron (``q_0``: univariate neurons per input, on average).
        input_of: for each neuron of source layer 0, the input it copies (-1: unused).
        representatives: edges used per source layer ``0..L``.
        input_bounds: the box ``[low, high]`` the construction is exact on.
    """

    model: nn.Module
    ticket_masks: dict[str, torch.Tensor]
    copies: tuple[int, ...]
    input_of: torch.Tensor
    representatives: tuple[int, ...]
    input_bounds: tuple[torch.Tensor, torch.Tensor]

    def max_abs_diff(self, target: nn.Module, n: int = 1024, seed: int = 0) -> float:
        """Largest ``|f_T(x) - f_S(x)|`` over ``n`` inputs drawn uniformly from the input box (plus its corners
        ``low`` and ``high``)."""
        lo, hi = self.input_bounds
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(n, lo.numel(), generator=g, dtype=torch.float64)
        x = torch.cat([lo[None], hi[None], lo + u * (hi - lo)])
        dtype = next(self.model.parameters()).dtype
        was = (target.training, self.model.training)
        target.eval()
        self.model.eval()
        try:
            with torch.no_grad():
                device = next(self.model.parameters()).device
                tdevice = next(target.parameters()).device
                ys = self.model(x.to(device, dtype)).double().cpu()
                yt = target(x.to(tdevice, next(target.parameters()).dtype)).double().cpu()
        finally:
            target.train(was[0])
            self.model.train(was[1])
        return float((ys - yt).abs().max())


def _assign_inputs(mask0: torch.Tensor, d: int) -> torch.Tensor:
    """Input copied by each neuron of source layer 0 (-1: unused), App. A.3's univariate blocks.

    Neuron ``i`` takes input ``i // q_0`` (the paper's contiguous blocks) when that edge is unmasked;
    every other neuron with an edge takes the connected input whose block is smallest so far.
    """
    n0 = mask0.shape[0]
    q0 = n0 // d
    rows = torch.arange(n0)
    home = torch.where(rows < q0 * d, rows // max(q0, 1), torch.full_like(rows, -1))
    ok = (home >= 0) & mask0[rows, home.clamp(min=0)]
    assign = torch.where(ok, home, torch.full_like(home, -1))
    sizes = torch.bincount(assign[assign >= 0], minlength=d).tolist()
    for i in torch.nonzero(~ok).flatten().tolist():
        cols = torch.nonzero(mask0[i]).flatten().tolist()
        if cols:
            j = min(cols, key=lambda c: (sizes[c], c))
            assign[i] = j
            sizes[j] += 1
    return assign


def _first_edges(mask: torch.Tensor, col_block: torch.Tensor, nblocks: int) -> torch.Tensor:
    """``out[r, j]`` = lowest column ``c`` with ``mask[r, c]`` and ``col_block[c] == j``, or -1."""
    rows, cols = mask.shape
    big = cols
    valid = col_block >= 0
    colidx = torch.arange(cols, device=mask.device)
    out = torch.empty(rows, nblocks, dtype=torch.int64, device=mask.device)
    chunk = max(1, _CHUNK_LANES // max(1, cols))
    idx_all = col_block.clamp(min=0)
    for r0 in range(0, rows, chunk):
        m = mask[r0:r0 + chunk] & valid
        src = torch.where(m, colidx, torch.full_like(colidx, big))
        o = torch.full((m.shape[0], nblocks), big, dtype=torch.int64, device=mask.device)
        o.scatter_reduce_(1, idx_all.expand(m.shape[0], -1), src, reduce="amin")
        out[r0:r0 + chunk] = o
    out[out == big] = -1
    return out


def _span(block: torch.Tensor, j: int) -> str:
    members = torch.nonzero(block == j).flatten().tolist()
    if not members:
        return "none"
    if members == list(range(members[0], members[-1] + 1)):
        return f"{members[0]}..{members[-1]}"
    return ", ".join(map(str, members[:8])) + (", ..." if len(members) > 8 else "")


def embed_weak_ticket(
    target: nn.Module,
    source: nn.Module,
    *,
    input_bounds: tuple[Any, Any] = (-1.0, 1.0),
) -> WeakTicketEmbedding:
    """Build the weak ticket of Theorems 2.4/2.5 inside an ER source MLP (App. A.3-A.4), in place.

    ``target`` is a ReLU MLP of depth ``L`` (``L`` Linear layers), ``source`` one of depth ``L + 1`` with
    ER masks (``sparsekit.prune`` or :func:`er_source`; an unpruned source counts as dense), the same
    number of inputs ``d`` and outputs. The construction:

    * Layer 0 (univariate): neuron ``i`` copies one input ``j`` it is connected to: weight 1, bias
      ``c_j = max(0, -low_j)``, so that its ReLU is the identity on the input box: it outputs
      ``x_j + c_j``. Blocks are contiguous (``i // q_0``, ``q_0 = n_{S,0} // d``) where the mask allows,
      other neurons join the smallest block they can reach.
    * Layer ``l >= 1``: source neurons ``q_l i .. q_l i + q_l - 1`` are copies of target neuron ``i``
      (``q_l = n_{S,l} // n_{T,l}``, ``q_L = 1``); each copy represents each nonzero ``w_{T,ij}`` by the
      lowest-indexed unmasked edge into the block of ``j`` (the paper picks one at random) and gets the
      target bias. All other weights are zero, so unused neurons stay at 0.
    * Bias compensation in layer 1: ``b_{S,i'} = b_{T,i} - sum_j w_{T,ij} c_j``. (App. A.3 prints the term
      for a single ``j``; the sum over ``j`` is what makes the construction exact.)

    The source then computes ``f_T`` exactly on the box, up to float rounding
    (:meth:`WeakTicketEmbedding.max_abs_diff`). Only edges of the ER mask get nonzero weights.

    Args:
        target: the target ReLU MLP.
        source: the masked source ReLU MLP; its weights and biases are overwritten.
        input_bounds: ``(low, high)``, numbers or per-input tensors: the input box of the paper's
            ``[a_1, b_1]^d``.

    Returns:
        A :class:`WeakTicketEmbedding`.

    Raises:
        EmbeddingError: a target weight has no representative edge (the source is too narrow or too
            sparse); the message names the weight, the source neuron and the block.
        ValueError: the networks are not ReLU MLPs of depths ``L`` and ``L + 1`` with matching sizes.
    """
    t_layers = _relu_mlp(target, "target")
    s_layers = _relu_mlp(source, "source")
    depth = len(t_layers)
    if len(s_layers) != depth + 1:
        raise ValueError(f"the source must have one Linear layer more than the target (depth L + 1 = {depth + 1}, "
                         f"for the univariate layer 0); it has {len(s_layers)}")
    d = t_layers[0].in_features
    if s_layers[0].in_features != d:
        raise ValueError(f"target and source must have the same number of inputs: {d} vs {s_layers[0].in_features}")
    if s_layers[-1].out_features != t_layers[-1].out_features:
        raise ValueError(f"target and source must have the same number of outputs (q_L = 1): "
                         f"{t_layers[-1].out_features} vs {s_layers[-1].out_features}")
    missing_bias = [i for i, m in enumerate(s_layers) if m.bias is None]
    if missing_bias:
        raise ValueError(f"source layer(s) {missing_bias} have no bias; the construction needs biases "
                         "(bias compensation, App. A.3)")
    t_widths = [d, *(m.out_features for m in t_layers)]
    s_widths = [m.out_features for m in s_layers]
    for l in range(1, depth):  # noqa: E741
        if s_widths[l] < t_widths[l]:
            raise ValueError(f"source layer {l} has {s_widths[l]} neurons, fewer than the {t_widths[l]} of target "
                             f"layer {l}: every target neuron needs at least one copy")
    if s_widths[0] < d:
        raise ValueError(f"source layer 0 has {s_widths[0]} neurons, fewer than the {d} inputs: every input needs a "
                         "univariate neuron")
    lo, hi = _bounds(input_bounds, d)
    names = {id(p): n for n, p in source.named_parameters()}
    c = torch.clamp(-lo, min=0.0)  # layer-0 bias per input

    # Layer 0: univariate blocks.
    s_masks = _masks_of(source, s_layers)
    m0 = s_masks[0]
    input_of = _assign_inputs(m0, d)
    w_t1 = t_layers[0].weight.detach().double().cpu()
    needed_inputs = (w_t1 != 0).any(dim=0)
    for j in torch.nonzero(needed_inputs & (torch.bincount(input_of[input_of >= 0], minlength=d) == 0)).flatten():
        j = int(j)
        i = int(torch.nonzero(w_t1[:, j]).flatten()[0])
        raise EmbeddingError(
            f"cannot place target weight W^(1)[{i}, {j}] = {float(w_t1[i, j]):.6g}: no neuron of source layer 0 has an "
            f"unmasked edge from input {j}, so input {j} has no univariate block; widen source layer 0 or keep it "
            "denser (the theory assumes flow preservation there)", 1, (i, j), None)
    new_w = [torch.zeros(m.weight.shape, dtype=torch.float64) for m in s_layers]
    new_b = [torch.zeros(m.out_features, dtype=torch.float64) for m in s_layers]
    used0 = input_of >= 0
    new_w[0][torch.nonzero(used0).flatten(), input_of[used0]] = 1.0
    new_b[0][used0] = c[input_of[used0]]

    prev_block = input_of
    copies = [max(1, s_widths[0] // d)]
    for l in range(1, depth + 1):  # noqa: E741
        n_t, n_s = t_widths[l], s_widths[l]
        q_l = n_s // n_t
        copies.append(q_l)
        rows = torch.arange(n_s)
        block = torch.where(rows < q_l * n_t, rows // q_l, torch.full_like(rows, -1))
        wt = t_layers[l - 1].weight.detach().double().cpu()
        bt = (t_layers[l - 1].bias.detach().double().cpu() if t_layers[l - 1].bias is not None
              else torch.zeros(n_t, dtype=torch.float64))
        mask = s_masks[l]
        first = _first_edges(mask, prev_block, t_widths[l - 1])  # (n_s, n_{T,l-1})
        used = block >= 0
        need = torch.zeros(n_s, t_widths[l - 1], dtype=torch.bool)
        need[used] = wt[block[used]] != 0
        missing = need & (first < 0)
        if bool(missing.any()):
            r, j = (int(v) for v in torch.nonzero(missing)[0])
            i = int(block[r])
            prev_name = "input" if l == 1 else "target neuron"
            raise EmbeddingError(
                f"cannot place target weight W^({l})[{i}, {j}] = {float(wt[i, j]):.6g}: source neuron {r} of layer {l} "
                f"(copy {r - i * q_l} of target neuron {i}) has no unmasked edge into the block of {prev_name} {j} "
                f"(source layer {l - 1} neurons {_span(prev_block, j)}). The source is too narrow or too sparse for "
                "this target; sparsekit.theory.weak_ticket_widths gives widths for which this happens with "
                "probability at most delta", l, (i, j), r)
        rr, jj = torch.nonzero(need, as_tuple=True)
        new_w[l][rr, first[rr, jj]] = wt[block[rr], jj]
        new_b[l][used] = bt[block[used]]
        if l == 1:  # compensate layer 0's bias: sum_j w_ij c_j
            new_b[l][used] -= (wt @ c)[block[used]]
        prev_block = block

    ticket_masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for m, w, b in zip(s_layers, new_w, new_b, strict=True):
            m.weight.copy_(w.to(device=m.weight.device, dtype=m.weight.dtype))
            m.bias.copy_(b.to(device=m.bias.device, dtype=m.bias.dtype))
            ticket_masks[names.get(id(m.weight), "?")] = (w != 0).to(m.weight.device)
    reps = tuple(int(w.count_nonzero()) for w in new_w)
    return WeakTicketEmbedding(source, ticket_masks, tuple(copies), input_of, reps, (lo, hi))


def er_source(
    plan: WidthPlan | Sequence[int],
    densities: float | Sequence[float] | None = None,
    *,
    input_density: float = 1.0,
    seed: int = 0,
    flow: str | None = "repair",
) -> tuple[nn.Module, Any]:
    """A masked ER source MLP with the plan's widths: ``sparsekit.models.mlp`` pruned with ``er-layerwise``.

    Args:
        plan: a :class:`WidthPlan` of a fully connected target, or the source widths
            ``(d, n_{S,0}, ..., n_{S,L})`` (inputs first).
        densities: ``p_1..p_L`` (default: the plan's).
        input_density: ``p_0`` of the univariate layer 0 (1: dense; the theory assumes flow preservation).
        seed: mask seed.
        flow: flow preservation of ``sparsekit.prune`` (``None`` draws the plain ER masks, as
            :func:`simulate_existence` does).

    Returns:
        ``(model, ticket)``.
    """
    from ._prune import prune
    from ._registry import Method
    from .models import mlp

    if isinstance(plan, WidthPlan):
        if "conv" in plan.target.kinds:
            raise ValueError("er_source builds fully connected sources; this plan is for a convolutional target")
        widths = [plan.target.input_dim, *plan.source_widths]
        ps = plan.densities if densities is None else _densities(densities, plan.target.depth)
    else:
        widths = [check_positive_int(w, f"width {i}") for i, w in enumerate(plan)]
        if len(widths) < 3:
            raise ValueError("source widths must be (d, n_S,0, ..., n_S,L) with at least one target layer")
        if densities is None:
            raise ValueError("pass densities=p_1..p_L with plain source widths")
        ps = _densities(densities, len(widths) - 2)
    p0 = _prob(input_density, "input_density", closed=True)
    model = mlp(widths[0], widths[1:-1], widths[-1])
    ticket = prune(model, Method("er-layerwise", {"densities": [p0, *ps]}), seed=seed, flow=flow)
    return model, ticket

