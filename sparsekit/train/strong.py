"""Strong lottery tickets: edge-popup inside an ER mask with annealed density (paper §2.1, App. A.7, A.9).

The source network is an ER network: ``prune`` draws a mask at ``er_density`` (flow-preserved, from
the seed) and the weights are re-drawn from the counter RNG with the chosen scheme
(:mod:`sparsekit.init`) and frozen. Edge-popup (Ramanujan et al. 2020; the edge-popup appendix)
learns one score per *ER-kept* edge; the forward pass uses, per layer, the ``k`` edges with the
largest ``|score|`` and the gradient goes straight through the top-k selection to the scores
(GetSubnet). ``k`` is annealed geometrically over ``levels`` levels from the ER density to the
final density, as in the iterative edge-popup of Fischer & Burkholz (2022) the paper uses (App. A.7:
5 levels of 100 epochs for ResNet18). ``er_density=1.0`` is plain edge-popup from a dense source
(the baseline of Tables 12 and 14).

Choices:

* **Scores live only on ER-kept edges** (a flat vector per layer), so a sparse source costs memory
  and time in proportion to its density.
* **Top-k without sorting**: the threshold is the ``(n-k+1)``-th smallest ``|score|``
  (``torch.kthvalue``, a selection). Scores move little between steps, so the previous threshold is
  tried first: if exactly ``k`` scores reach it, those are the top ``k``; else, when counting shows the
  new threshold inside a narrow band around the old one, only the band's entries are selected from
  (its width adapts to how far the threshold moved). Both shortcuts are exact.
  Ties at the threshold are broken by the lower index, so every level keeps exactly ``k`` edges.
  The comparisons run on the bit patterns of ``|score|`` read as integers (same order, faster).
* **Effective weights kept between steps**: each layer's ``w * GetSubnet(|s|)`` in its dense shape is
  rewritten only where the selection changed since the last step (a few edges), never while an
  autograd graph that saved it is pending (then a new tensor is made); the scores' gradient is the
  straight-through one, gathered at the ER-kept positions. The scores train with fused SGD.
* **Everything else is frozen**: BatchNorm affine parameters and other unmasked parameters keep
  their values and do not train (the paper's edge-popup code learns no weights at all; with affine
  BatchNorm at its init of weight 1 and bias 0 this is edge-popup's non-affine BN, and fit_strong
  warns about BatchNorm layers whose affine parameters are not at 1 and 0). The biases of the
  masked layers are set to zero by default (``bias="zero"``), as in the reference code;
  ``bias="keep"`` keeps their values (frozen). BatchNorm running statistics are updated as usual;
  the ticket stores all unmasked state (``weights`` mode ``state``), a few KiB, and no weight values
  of the masked layers.
* **Init scale (``scale_fan``, default on)**: the frozen weights' ``sigma = sqrt(2 / fan)`` uses the
  fan-in of the *final ticket*, ``fan = fan_in * (nonzeros / numel)`` of each layer at the final
  density, not the ER source's ``fan_in * er_density`` and not the dense ``fan_in``. This is
  edge-popup's scaled init (the references divide the std by ``sqrt(final density)``) and what a
  ticket file rebuilds (``formats/TICKET.md`` §9.5). Measured on digits (issue 17,
  ``benchmarks/strong_investigation.py``, 3 seeds): without scaling, the ER(0.5) source loses 4.4
  points and the dense one 3.5; scaling by the ER source's fan-in is 1.1 points worse than by the
  final ticket's.
* **Learning rate**: cosine annealing restarted at every level (edge-popup trains with a cosine
  schedule), or constant.

Conventions that still differ from the reference code (RelationalML/sparse_to_sparse ``ER_SLT``;
allenai/hidden-networks), and why:

* **Annealing**: level ``i`` keeps ``source_nnz * (final / source_nnz) ** (i / levels)`` edges, so
  the schedule starts from the ER source. ER_SLT starts from ``--sparsity_start`` (0.6 by default,
  clipped to the ER density) with the same geometric steps; the two agree when ``sparsity_start``
  is the ER density, which is the only choice that needs no extra parameter.
* **k rounding**: ``k = round(density * numel)`` per layer (at least 1, at most the ER source's
  edges); the references truncate (``int(...)``), a difference of at most one edge per layer.
* **Learning-rate schedule**: cosine restarted per level (edge-popup's cosine, applied per level as
  in iterative edge-popup); ER_SLT's script uses a step schedule. Measured on digits: within noise.
* **Init scheme**: Signed Kaiming Constant by default (edge-popup's best, its appendix Tables 2-3);
  the paper's SLT instructions and ER_SLT's default use Kaiming normal (``init="kaiming-normal"``),
  which measured 1.0 (ER 0.5) and 0.2 (dense) points lower on digits (one seed).
* **Weight values**: drawn from sparsekit's counter RNG (so a ticket file rebuilds them from a
  seed), not from ``torch.randn``; same distributions.
* **Biases**: the references have none or zero biases; ``bias="zero"`` (default) matches them.
  Keeping PyTorch's random biases measured within noise on digits (-0.1 / +0.2 points, 3 seeds).
  Scores are never learned for biases (ER_SLT optionally scores biases too).
* **Scores**: one per ER-kept edge (a flat vector) instead of a dense score tensor with a mask; the
  selection and straight-through gradients are the same.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset

from .._prune import prune
from ..attach import _remember_ticket, attach, finalize, is_pruned
from ..densities import layer_densities
from ..errors import SparsekitError
from ..init import INIT_SCHEMES, fan_in, init_weight, uniform_from_stream
from ..layers import LayerLayout, find_layers
from ..masks import CompactMask, flat_nonzero
from ..rng import stream_key
from ..ticket import LayerRecord, Ticket
from .engine import Algorithm, History, TrainConfig, run

__all__ = ["fit_strong", "EdgePopup", "level_counts", "topk_mask"]

SCORE_INITS = ("kaiming-uniform", "uniform")
BIAS_MODES = ("zero", "keep")


def level_counts(source_nnz: int, final_k: int, levels: int) -> list[int]:
    """Kept edges of one layer after each of ``levels`` levels: geometric from ``source_nnz`` to ``final_k``.

    Level ``i`` (1-based) keeps ``round(source_nnz * (final_k / source_nnz) ** (i / levels))`` edges
    (at least 1); the last level keeps exactly ``final_k``.
    """
    if source_nnz <= 0:
        return [0] * levels
    ratio = final_k / source_nnz
    counts = [max(1, min(source_nnz, round(source_nnz * ratio ** (i / levels)))) for i in range(1, levels + 1)]
    counts[-1] = final_k
    return counts


def _topk_full(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    n = scores.numel()
    thr = float(torch.kthvalue(scores, n - k + 1).values)
    m = scores > thr
    missing = k - int(torch.count_nonzero(m))
    if missing > 0:  # ties at the threshold: take the first ``missing`` of them
        ties = torch.nonzero(scores == thr).flatten()[:missing]
        m[ties] = True
    return m, thr


_SAME_ORDER_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}
_PACK = {torch.float32: ("<f", "<i"), torch.float64: ("<d", "<q")}  # struct formats: float, same-size int


def _comparable(scores: torch.Tensor, nonnegative: bool) -> tuple[torch.Tensor, Callable[[float], Any]]:
    """``scores`` as a tensor to compare thresholds with, and the conversion of a threshold.

    Non-negative floats order as their bit patterns read as signed integers do, and comparing
    integers is ~1.5x faster than comparing floats on the CPU. A threshold becomes the bits of its
    nearest value in ``scores.dtype`` (exact for a threshold read from ``scores``; a negative one
    stays below every non-negative pattern).
    """
    it = _SAME_ORDER_INT.get(scores.dtype) if nonnegative else None
    if it is None:
        return scores, float
    fmt = _PACK.get(scores.dtype)
    if fmt is not None:  # struct rounds to nearest like a tensor conversion, ~20x cheaper than torch.tensor()
        return scores.view(it), lambda x: _bits(x, fmt)
    dtype = scores.dtype
    return scores.view(it), lambda x: int(torch.tensor(x, dtype=dtype).view(it))


def _bits(x: float, fmt: tuple[str, str]) -> int:
    try:
        return struct.unpack(fmt[1], struct.pack(fmt[0], x))[0]
    except OverflowError:  # beyond the dtype's range: the bits of +-inf order the same way
        return struct.unpack(fmt[1], struct.pack(fmt[0], math.copysign(math.inf, x)))[0]


def topk_mask(scores: torch.Tensor, k: int, hint: float | torch.Tensor | None = None,
              width: float = 0.0, *, per_unit: float = 0.0, nonnegative: bool = False,
              stats: dict[str, float] | None = None) -> tuple[torch.Tensor, float]:
    """Bool mask of the ``k`` largest entries of the 1-D ``scores`` and the threshold used.

    ``hint`` is a previous threshold. If exactly ``k`` entries reach it, they are the answer (one
    comparison pass). Else, with ``width > 0``, the k-th largest is searched only among the entries
    between ``hint`` and ``hint ± width`` (on the side counting says it moved to) when the counts show
    it lies there: a second comparison pass, the band's few indices (word-level scan of a sparse bool
    tensor), a selection over the band, and a scatter of the chosen band entries into the mask of
    the entries beyond the band. Otherwise a full selection runs. Always exact: ties at the threshold
    keep the lowest indices, so the mask has exactly ``k`` entries.

    ``per_unit`` (entries per unit of score near the threshold, measured on the previous band and
    reported in ``stats["per_unit"]``) sizes the band from the number of entries that crossed the
    hint, ``|count - k|``, instead of ``width``: a band of a few times that many entries, far fewer
    than a band sized by the threshold's last move.

    Thresholds are Python floats: comparing a tensor with a Python number and counting with
    ``count_nonzero`` are several times faster on the CPU than comparing with a 0-dim tensor and
    summing bools (the conversion is exact: a float64 holds every float32/16 value).
    ``nonnegative=True`` promises ``scores >= 0`` (edge-popup passes ``|s|``): the comparisons then
    run on the bit patterns as integers, which order the same way and compare faster. A NaN score
    (after abs, its bits exceed every finite value) then counts as the largest.
    """
    n = scores.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device), float(scores.min()) if n else 0.0
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device), float(scores.max()) + 1.0
    if hint is None:
        return _topk_full(scores, k)
    hint = float(hint)
    v, conv = _comparable(scores, nonnegative)
    m = v >= conv(hint)
    c = int(torch.count_nonzero(m))
    if c == k:
        return m, hint
    if per_unit > 0:  # expect ~4x the entries that crossed (and a floor of 256) inside the band
        width = max(4 * abs(c - k), abs(c - k) + 256) / per_unit
    if width <= 0:
        return _topk_full(scores, k)
    if c > k:  # the k-th largest rose: it is in [hint, hint + width] if fewer than k entries exceed that
        base = v > conv(hint + width)
        above = int(torch.count_nonzero(base))
        if above >= k:
            return _topk_full(scores, k)
        idx = flat_nonzero(m ^ base)  # the band [hint, hint + width] (base lies inside m), ascending
    else:  # it fell: it is in [hint - width, hint) if enough entries are there
        base, above = m, c
        idx = flat_nonzero((v >= conv(hint - width)) ^ m)
    need = k - above
    if stats is not None and idx.numel() > 0:
        stats["per_unit"] = idx.numel() / width
    if idx.numel() < need:
        return _topk_full(scores, k)
    vals = scores[idx]
    thr = float(torch.kthvalue(vals, idx.numel() - need + 1).values)
    pick = vals > thr
    missing = need - int(torch.count_nonzero(pick))
    if missing > 0:  # ties at the threshold, all inside the band: the lowest indices
        pick[torch.nonzero(vals == thr).flatten()[:missing]] = True
    base[idx[pick]] = True
    return base, thr


class _GetSubnet(torch.autograd.Function):
    """Top-k selection with a straight-through gradient (edge-popup's GetSubnet)."""

    @staticmethod
    def forward(ctx: Any, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return mask.to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


class _WeightCache:
    """A layer's effective weight kept between steps, so a step rewrites only the edges whose selection changed.

    ``buf`` holds ``w * mask`` scattered into the layer's flat shape for the selection ``mask``. A
    step's new selection differs from the last in few edges (scores move little), so updating those
    replaces a zero fill of the whole layer and a scatter of every ER-kept weight. ``live`` is set while
    an autograd graph that saved ``buf`` has not been backpropagated (cleared by the backward of the
    graph that made it, matched by ``gen``): then the next call writes into a new buffer instead, so a
    graph never sees its saved weight change (two forward passes before one backward, a graph dropped
    without backward). Writing into a buffer whose tensors are still used by a retained graph raises
    autograd's in-place error; it is never silent. ``version`` is ``mask``'s version counter when it
    was stored: a mask changed in place since (by a subclass reusing its mask tensors) no longer
    describes ``buf``, and the buffer is rebuilt.
    """

    __slots__ = ("buf", "mask", "version", "live", "gen")

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.version = -1
        self.live = False
        self.gen = 0

    def describes(self, mask: torch.Tensor, like: torch.Tensor) -> bool:
        """Whether ``buf`` can be updated for ``mask``: it exists, no pending graph saved it, and the
        stored mask (what ``buf`` holds) is unchanged and of the same shape, dtype and device."""
        m, b = self.mask, self.buf
        return (b is not None and m is not None and not self.live and m._version == self.version
                and m.shape == mask.shape and b.dtype == like.dtype and b.device == like.device)


class _EffectiveWeight(torch.autograd.Function):
    """``zeros(numel).index_put(kept, w * GetSubnet(|s|)).view(shape)`` in one op, with the same gradients.

    Forward writes the frozen weights of the selected edges into a zero tensor of the layer's size
    (``index_copy_``, half the time of ``index_put`` on the CPU), or, given a :class:`_WeightCache`
    whose buffer no pending graph uses, rewrites only the edges whose selection changed since the
    buffer was last written. Backward gathers the gradient at the ER-kept positions and multiplies by
    ``w * sign(s)``, the straight-through gradient of ``w * GetSubnet(|s|)`` (every score gets one,
    selected or not). Equal to the unfused autograd graph bit for bit (tested), without its
    intermediate tensors.
    """

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,  # noqa: PLR0913
                kept: torch.Tensor | None, numel: int, shape: tuple[int, ...] | None = None,
                cache: _WeightCache | None = None, record: bool = False) -> torch.Tensor:
        ctx.save_for_backward(scores, weights, kept)
        shape = shape or (numel,)
        if cache is not None and cache.describes(mask, weights):
            buf = cache.buf
            changed = flat_nonzero(mask ^ cache.mask)
            if changed.numel():
                vals = weights.index_select(0, changed).mul_(mask.index_select(0, changed).to(weights.dtype))
                buf.index_copy_(0, changed if kept is None else kept.index_select(0, changed), vals)
        else:
            vals = weights * mask.to(weights.dtype)
            buf = vals if kept is None else torch.zeros(numel, dtype=vals.dtype, device=vals.device).index_copy_(
                0, kept, vals)
            if cache is not None:
                cache.buf, cache.gen = buf, cache.gen + 1
        if cache is not None:
            cache.mask, cache.version, cache.live = mask, mask._version, record
            ctx.cache, ctx.gen = cache, cache.gen
        return buf.view(shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None, None, None]:
        cache = getattr(ctx, "cache", None)
        if cache is not None and cache.gen == ctx.gen:
            cache.live = False
        scores, weights, kept = ctx.saved_tensors
        g = grad.reshape(-1)
        g = g.take(kept) if kept is not None else g.clone()  # take: the same gather, ~20% faster on the CPU
        return g.mul_(weights).mul_(scores.sign()), None, None, None, None, None, None, None


@dataclass
class _Layer:
    fqn: str
    shape: tuple[int, ...]
    numel: int
    kept: torch.Tensor | None  # ER-kept flat indices (None: the whole layer)
    weights: torch.Tensor  # frozen weights at the kept positions (flat)
    counts: list[int]  # kept edges per level
    threshold: float | None = None
    width: float = 0.0  # half-width of the band searched around the last threshold
    per_unit: float = 0.0  # scores per unit of |s| near the threshold (sizes the next band)
    cache: _WeightCache = field(default_factory=_WeightCache)  # the effective weight between steps

    @property
    def source_nnz(self) -> int:
        return self.weights.numel()


class _SubnetModel(nn.Module):
    """Calls the model with each masked weight replaced by ``w * GetSubnet(|s|)``."""

    def __init__(self, model: nn.Module, algo: EdgePopup) -> None:
        super().__init__()
        self.model = model
        self.scores = algo.scores
        self._algo = [algo]  # not a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self._algo[0].effective_weights(reuse=True), args, kwargs, strict=False,
                               tie_weights=True)


class EdgePopup(Algorithm):
    """Edge-popup inside an ER mask with per-level annealing of ``k`` (see the module docstring)."""

    name = "strong"
    fused_sgd = True

    def __init__(self, masks: dict[str, CompactMask], final_counts: dict[str, int], layouts: dict[str, LayerLayout],
                 *, levels: int, epochs_per_level: int, init: str, scale_fan: bool, score_init: str, seed: int,
                 schedule: str) -> None:
        self.masks, self.final_counts, self.layouts = masks, final_counts, layouts
        self.levels, self.epochs_per_level = levels, epochs_per_level
        self.init, self.scale_fan, self.score_init, self.seed, self.sched = init, scale_fan, score_init, seed, schedule
        self.layers: list[_Layer] = []
        self.scores = nn.ParameterList()
        self.level = 0

    # -- setup -----------------------------------------------------------------------------------
    def setup(self, model: nn.Module, device: torch.device) -> None:
        self.layers = []
        self.scores = nn.ParameterList()
        for fqn, cm in self.masks.items():
            p = model.get_parameter(fqn)
            numel = p.numel()
            kept = None if cm.nnz == numel else cm.kept_indices().to(device)
            flat = p.detach().reshape(-1)
            w = flat if kept is None else flat.index_select(0, kept)
            counts = level_counts(cm.nnz, self.final_counts[fqn], self.levels)
            self.layers.append(_Layer(fqn, tuple(p.shape), numel, kept, w.clone(), counts))
            fan = fan_in(tuple(p.shape), self.layouts[fqn])
            key = stream_key(self.seed, fqn, "scores")
            if self.score_init == "kaiming-uniform":  # edge-popup: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(fan)
                s = uniform_from_stream(key, cm.nnz, -bound, bound, dtype=p.dtype, device=device)
            else:
                s = uniform_from_stream(key, cm.nnz, 0.0, 1.0, dtype=p.dtype, device=device)
            self.scores.append(nn.Parameter(s))

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(self.scores)

    def wrap(self, model: nn.Module) -> nn.Module:
        return _SubnetModel(model, self)

    def schedule(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
        E = self.epochs_per_level
        if self.sched == "constant":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * (e % E) / E)))

    # -- the forward pass ------------------------------------------------------------------------
    def current_masks(self) -> list[torch.Tensor]:
        """Bool masks over each layer's ER-kept edges at the current level."""
        out = []
        for L, s in zip(self.layers, self.scores, strict=True):
            with torch.no_grad():
                st: dict[str, float] = {}
                m, thr = topk_mask(s.detach().abs(), L.counts[self.level], L.threshold, L.width,
                                   per_unit=L.per_unit, nonnegative=True, stats=st)
                L.per_unit = st.get("per_unit", L.per_unit)
                if L.threshold is not None:  # the next band: a few times the threshold's last move
                    L.width = max(4.0 * abs(thr - L.threshold), 1e-7 * abs(thr))
            L.threshold = thr
            out.append(m)
        return out

    def effective_weights(self, *, reuse: bool = False) -> dict[str, torch.Tensor]:
        """Each masked weight as ``w * GetSubnet(|s|)`` scattered into its dense shape (one fused op).

        With ``reuse=True`` (the training forward pass) each layer's tensor is kept and, at the next
        call, rewritten where the selection changed: a tensor returned earlier then changes in place.
        The default returns new tensors.
        """
        record = torch.is_grad_enabled()
        return {L.fqn: _EffectiveWeight.apply(s, m, L.weights, L.kept, L.numel, L.shape,
                                              L.cache if reuse else None, record and s.requires_grad)
                for L, s, m in zip(self.layers, self.scores, self.current_masks(), strict=True)}

    # -- levels ----------------------------------------------------------------------------------
    def on_epoch_end(self, state: Any) -> dict[str, float]:
        done = state.epoch + 1  # epochs finished, this one included
        level_now = min(self.levels - 1, done // self.epochs_per_level)
        kept = sum(L.counts[self.level] for L in self.layers)
        total = sum(L.numel for L in self.layers)
        stats = {"level": float(self.level + 1), "density": kept / total if total else 1.0}
        if level_now != self.level:
            self.level = level_now
            for L in self.layers:
                L.threshold, L.width, L.per_unit = None, 0.0, 0.0
        return stats

    def final_masks(self) -> dict[str, CompactMask]:
        """The masks of the last level as full-size CompactMasks."""
        saved = self.level
        self.level = self.levels - 1
        try:
            out = {}
            for L, m in zip(self.layers, self.current_masks(), strict=True):
                idx = torch.nonzero(m).flatten()
                kept = idx if L.kept is None else L.kept.index_select(0, idx)
                kept = torch.sort(kept.cpu()).values
                dense = torch.zeros(L.numel, dtype=torch.bool)
                dense[kept] = True
                out[L.fqn] = CompactMask.from_bool(dense.view(L.shape))
            return out
        finally:
            self.level = saved

    def ticket(self, model: nn.Module) -> Any:
        return None  # the ER mask and the scores are in state_dict(); the strong ticket is built at the end

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "scores": [s.detach().cpu() for s in self.scores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.level = int(state["level"])
        with torch.no_grad():
            for s, v in zip(self.scores, state["scores"], strict=True):
                if s.shape != v.shape:
                    raise SparsekitError("the checkpoint's scores do not fit this ER source: resume with the same "
                                         "er_method, er_density and seed")
                s.copy_(v)
        for L in self.layers:
            L.threshold = None


def fit_strong(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    *,
    density: float,
    epochs_per_level: int,
    er_density: float = 0.5,
    er_method: str = "er-uniform",
    final_method: str | None = None,
    levels: int = 5,
    init: str = "signed-kaiming-constant",
    scale_fan: bool = True,
    bias: str = "zero",
    score_init: str = "kaiming-uniform",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "cosine",
    eval_data: Dataset | DataLoader | None = None,
    device: str | torch.device = "auto",
    amp: str | None = "auto",
    seed: int = 0,
    flow: str | None = "repair",
    callbacks: Sequence[Any] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    num_workers: int | None = None,
) -> Ticket:
    """Find a strong lottery ticket inside an ER network with edge-popup (paper §2.1, Table 1; App. A.7, A.9).

    The model's masked weights are re-drawn from ``seed`` with ``init`` and never trained; only
    edge scores are. Afterwards the model carries the final strong mask (``sparsekit.is_pruned``),
    its weights are the seed-drawn ones, and the returned ticket rebuilds it exactly:
    ``apply_ticket(fresh_model, ticket)`` gives the same logits.

    Args:
        model: an unpruned model (the ER source mask is drawn here).
        train_data: Dataset or DataLoader of ``(input, target)``.
        density: final global density of the strong ticket.
        epochs_per_level: epochs trained at each density level (paper: 100).
        er_density: density of the ER source network; 1.0 is plain edge-popup on a dense source.
        er_method: layerwise scheme of the ER source (paper Table 1: uniform). On a small conv net (digits,
            a 288-weight first layer) ``"erk"`` narrowed the ER(0.5)-vs-dense gap from 3.1 to 0.7 points
            and raised both (issue 17, benchmarks/README).
        final_method: layerwise scheme of the final per-layer densities (default ``er_method``);
            a layer never keeps more edges than its ER source has.
        levels: number of annealing levels (paper: 5).
        init: ``"signed-kaiming-constant"`` (default; best in the edge-popup appendix), ``"kaiming-normal"``
            or ``"kaiming-uniform"``; drawn from the counter RNG (:mod:`sparsekit.init`).
        scale_fan: use the final ticket's fan-in, ``fan_in * final layer density``, for the init's
            scale (edge-popup's scaled variants; the default since issue 17, which measured 3.5-4.4 points
            more on digits). The ER source's density does not enter (module docstring). ``False``
            (the default before) scales by the dense ``fan_in``.
        bias: ``"zero"`` (default, as the references) sets the biases of the masked layers to zero;
            ``"keep"`` keeps their values (the behaviour before issue 17). Both stay frozen.
        score_init: ``"kaiming-uniform"`` (edge-popup's) or ``"uniform"`` in (0, 1).
        lr, momentum, weight_decay, batch_size: SGD on the scores (paper App. A.7: 0.1, 0.9, 5e-4, 128).
        schedule: ``"cosine"`` (restarted at every level) or ``"constant"``.
        flow: flow preservation of the ER source mask (``"repair"``, ``"resample"`` or None).
        eval_data, device, amp, seed, callbacks, checkpoint_dir, resume, progress, loss_fn, num_workers:
            as in :func:`sparsekit.fit_weak`; the history's extra columns are ``level`` and ``density``.

    Returns:
        A Ticket of kind ``"strong"``: the final masks, ``init = {"scheme", "seed", "scale_fan"}`` and
        (as ``ticket.history``) the training history. Save it with ``save_ticket``: the file holds
        the mask bits and the unmasked state (BatchNorm statistics, biases), no masked weight values.
    """
    if is_pruned(model):
        raise SparsekitError("fit_strong draws its own ER source mask: pass an unpruned model (or call "
                             "sparsekit.finalize(model) first)")
    for name, v, lo in (("density", density, 0.0), ("er_density", er_density, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {v!r}")
    if density > er_density:
        raise ValueError(f"density ({density}) must not exceed er_density ({er_density}): the strong ticket is "
                         "found inside the ER source network")
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")
    if not isinstance(epochs_per_level, int) or isinstance(epochs_per_level, bool) or epochs_per_level < 1:
        raise ValueError(f"epochs_per_level must be a positive int, got {epochs_per_level!r}")
    if init not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got {init!r}")
    if score_init not in SCORE_INITS:
        raise ValueError(f"score_init must be one of {SCORE_INITS}, got {score_init!r}")
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    if not isinstance(scale_fan, bool):
        raise ValueError(f"scale_fan must be True or False, got {scale_fan!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' (restarted each level) or 'constant', got {schedule!r}")
    config = TrainConfig(epochs=levels * epochs_per_level, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         batch_size=batch_size, schedule="constant", seed=seed, amp=amp, num_workers=num_workers,
                         device=device if isinstance(device, str) else str(device))

    # the ER source network (drawn as prune draws it), then frozen seed-drawn weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        er = prune(model, er_method, er_density, seed=seed, flow=flow)
    layouts = dict(er.layouts)
    finalize(model)
    final_d = layer_densities(model, final_method or er_method, density)
    source: dict[str, CompactMask] = {}
    final_counts: dict[str, int] = {}
    records = {r.fqn: r for r in er.layers}
    for r in er.layers:
        cm = er.compact_masks.get(r.fqn) or CompactMask.from_bool(torch.ones(r.shape, dtype=torch.bool))
        source[r.fqn] = cm
        final_counts[r.fqn] = max(1, min(cm.nnz, round(final_d.get(r.fqn, density) * r.numel)))
    if any(fqn not in layouts for fqn in source):  # layers prune kept dense carry no layout in its ticket
        layouts.update({L.fqn: L.layout for L in find_layers(model) if L.fqn not in layouts})
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        for fqn in source:
            p = model.get_parameter(fqn)
            d = final_counts[fqn] / p.numel()
            p.copy_(init_weight(fqn, tuple(p.shape), layouts[fqn], init, seed, density=d, scale_fan=scale_fan,
                                dtype=p.dtype, device=p.device))
        if bias == "zero":
            for b in _masked_layer_biases(model, source):
                b.zero_()
    _warn_affine_norms(model)
    for p in model.parameters():
        p.requires_grad_(False)

    algo = EdgePopup(source, final_counts, layouts, levels=levels, epochs_per_level=epochs_per_level, init=init,
                     scale_fan=scale_fan, score_init=score_init, seed=seed, schedule=schedule)
    try:
        history: History = run(model, train_data, config, algorithm=algo, eval_data=eval_data, loss_fn=loss_fn,
                               callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(requires.get(n, True))

    masks = algo.final_masks()
    layers = []
    for fqn, cm in masks.items():
        r = records[fqn]
        layers.append(LayerRecord(fqn, r.module_type, tuple(r.shape), cm.nnz / cm.numel, cm.nnz, aliases=r.aliases,
                                  dtype=r.dtype))
    total = sum(r.numel for r in layers)
    ticket = Ticket("edge-popup", sum(r.nonzeros for r in layers) / total if total else 1.0, seed, None, True, layers,
                    masks, {"er_method": er.method, "er_density": er_density, "er_flow": flow,
                            "final_method": final_method or er.method, "levels": levels,
                            "epochs_per_level": epochs_per_level, "score_init": score_init, "bias": bias},
                    kind="strong", sparsekit_version=er.sparsekit_version)
    ticket.layouts = layouts
    ticket.init = {"scheme": init, "seed": str(seed), "scale_fan": scale_fan}
    attach(model, masks)
    ticket.model_ref = weakref.ref(model)
    _remember_ticket(model, ticket)
    ticket.history = history  # type: ignore[attr-defined]
    return ticket


def _masked_layer_biases(model: nn.Module, weights: dict[str, Any]) -> list[nn.Parameter]:
    """The bias of each masked weight's layer: the sibling parameter named with ``weight`` -> ``bias``.

    ``x.weight`` -> ``x.bias``, ``attn.in_proj_weight`` -> ``attn.in_proj_bias``. Layers without one
    (``bias=False``) have none; each bias is listed once (tied layers).
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[int, nn.Parameter] = {}
    for fqn in weights:
        head, _, last = fqn.rpartition(".")
        if "weight" not in last:
            continue
        name = (head + "." if head else "") + last.replace("weight", "bias")
        b = params.get(name)
        if b is not None:
            out[id(b)] = b
    return list(out.values())


def _warn_affine_norms(model: nn.Module) -> None:
    """Warn when normalisation layers have affine parameters away from 1 and 0: fit_strong freezes them."""
    odd = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if (w is not None and not bool((w == 1).all())) or (b is not None and not bool((b == 0).all())):
                odd.append(name or type(m).__name__)
    if odd:
        warnings.warn(f"fit_strong freezes normalisation affine parameters; {len(odd)} layer(s) are not at weight 1 "
                      f"and bias 0 (e.g. {odd[:3]}), so the strong ticket is found with those fixed values, unlike "
                      "edge-popup's non-affine BatchNorm; reset them (nn.init.ones_/zeros_) for the reference setting",
                      stacklevel=3)
