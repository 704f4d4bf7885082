"""Pruners that learn masks from a criterion: SNIP, iterative SynFlow and IMP (the paper's baselines).

The paper compares ER masks with the masks of three pruning algorithms and with ER randomisations
of their layerwise densities (§3 "Layerwise Sparsity Ratios", Tables 2-3 and 7-10, App. A.7, A.10):

* :func:`snip`: connection sensitivity ``|g * w|`` from one (or a few) batches, global top-k
  (Lee et al. 2019).
* :func:`synflow`: data-free iterative synaptic flow (Tanaka et al. 2020): scores
  ``|w * dR/dw|`` with ``R = 1^T (prod_l |W_l|) 1`` computed by a forward pass of an all-ones input
  through the network with absolute weights (BatchNorm in eval mode, its statistics and affine
  parameters made absolute too), pruned globally in ``iterations`` steps with the exponential
  schedule ``density ** (k / iterations)``.
* :func:`imp`: iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019): train,
  prune the smallest weights globally to ``density ** (r / rounds)``, rewind the kept weights to
  their values at ``rewind_epoch`` (0: initialisation), repeat (App. A.7: 25 levels). Each round
  trains on the :func:`sparsekit.fit_weak` engine, with checkpoints and exact resume.

Each returns a :class:`~sparsekit.Ticket` of kind ``"learned"`` (mask bits are stored in ticket
files) with one :class:`~sparsekit.LayerRecord` per masked weight, and attaches the masks to the
model as :func:`sparsekit.prune` does. The ER randomisations (``er-snip``, ``er-synflow``,
``er-from``) are registered methods of :func:`sparsekit.prune` (:mod:`sparsekit._data_methods`).

Scoring never changes the model: weights, buffers, gradients, ``requires_grad`` flags and
train/eval modes are restored exactly afterwards.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import __version__
from ._io import atomic_write_bytes
from ._prune import _dtype_name
from .attach import _remember_ticket, attach, finalize, is_pruned
from .densities import validate_density
from .errors import SparsekitError
from .layers import FilterFn, Layer, prunable_layers
from .masks import CompactMask
from .rng import RNG_ID
from .ticket import LayerRecord, Ticket, model_fingerprint
from .train.engine import Algorithm, History, TrainConfig, _split_batch, _stats_from_dict, _to, run

__all__ = ["snip", "synflow", "imp", "magnitude", "snip_scores", "synflow_scores", "synflow_masks", "global_topk",
           "infer_input_shape", "warn_collapse", "IMP_STATE_NAME"]

#: The small per-round state file of an IMP run in its ``checkpoint_dir``.
IMP_STATE_NAME = "imp_state.json"
_IMP_FORMAT = "sparsekit-imp"
_IMP_VERSION = 1


# --------------------------------------------------------------------------------------------------
# shared pieces


def _check_model(model: object, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if is_pruned(model):
        raise SparsekitError(f"{what}: the model already carries sparsekit masks; call sparsekit.finalize(model) "
                             "first (pruners score the whole network)")
    return model


def _check_live(layers: Sequence[Layer], what: str) -> None:
    if any(L.param.is_meta for L in layers):
        raise SparsekitError(f"{what} runs the model, which is on the meta device; materialise it first "
                             "(model.to_empty(device='cpu') and initialise the weights)")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _select(values: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Bool selections of the ``k`` largest entries of the 1-D ``values`` taken together; ties at the
    threshold go to earlier tensors and lower indices."""
    flat = torch.cat(list(values)) if values else torch.zeros(0)
    n = flat.numel()
    k = max(0, min(int(k), n))
    if k == n:
        keep = torch.ones(n, dtype=torch.bool, device=flat.device)
    elif k == 0:
        keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
    else:
        threshold = torch.kthvalue(flat.cpu(), n - k).values.to(flat.device)  # the (n-k)-th smallest
        keep = flat > threshold
        need = k - int(keep.sum())
        if need > 0:
            keep[torch.nonzero(flat == threshold).flatten()[:need]] = True
    return list(keep.split([v.numel() for v in values]))


def _check_finite(scores: Mapping[str, torch.Tensor], what: str) -> None:
    bad = [f for f, s in scores.items() if torch.isnan(s).any()]
    if bad:
        raise SparsekitError(f"{what} scores of {bad[:3]} are NaN; check the model's outputs (or use float64 weights)")


def global_topk(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Bool masks keeping exactly the ``k`` highest scores over all layers together (global top-k).

    Ties at the threshold are broken by position (earlier layers, then lower flat indices, first),
    so the result is deterministic.

    Raises:
        SparsekitError: a score is NaN (the criterion overflowed or the model produced NaNs).
    """
    _check_finite(scores, "the")
    names = list(scores)
    picks = _select([scores[n].detach().reshape(-1) for n in names], k)
    return {n: p.reshape(scores[n].shape) for n, p in zip(names, picks, strict=True)}


def _prune_kept(scores: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor], k: int,
                what: str) -> dict[str, torch.Tensor]:
    """Global top-k among the kept entries only: ``scores`` holds one score per kept flat index in
    ``kept``; returns the kept flat indices after pruning (cost proportional to what is kept)."""
    _check_finite(scores, what)
    names = list(kept)
    picks = _select([scores[n] for n in names], k)
    return {n: kept[n][p] for n, p in zip(names, picks, strict=True)}


def _index_mask(shape: Sequence[int], kept: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(math.prod(shape), dtype=torch.bool, device=kept.device)
    mask[kept] = True
    return mask.reshape(tuple(shape))


@contextlib.contextmanager
def _scoring(model: nn.Module, layers: Sequence[Layer]) -> Iterator[None]:
    """Score ``layers`` inside: eval mode, gradients only for the layers' weights; afterwards every
    weight, buffer, gradient, ``requires_grad`` flag and train/eval mode is exactly as before."""
    state = {id(t): (t, t.detach().clone()) for t in model.state_dict(keep_vars=True).values()
             if isinstance(t, torch.Tensor)}
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in params]
    wanted = {id(L.param) for L in layers}
    try:
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in wanted)
        model.eval()
        yield
    finally:
        with torch.no_grad():
            for t, saved in state.values():
                t.copy_(saved)
        for m, training in modes:
            m.training = training
        for p, requires, grad in flags:
            p.requires_grad_(requires)
            p.grad = grad


def _learned_ticket(model: nn.Module, layers: Sequence[Layer], masks: Mapping[str, torch.Tensor], method: str,
                    density: float, options: dict[str, Any], seed: int = 0) -> Ticket:
    """A ticket of kind ``learned`` for ``masks`` (one record per layer), attached to ``model``."""
    records: list[LayerRecord] = []
    compact: dict[str, CompactMask] = {}
    for L in layers:
        mask = masks[L.fqn].to(device=L.param.device, dtype=torch.bool)
        nnz = int(mask.sum())
        records.append(LayerRecord(L.fqn, L.module_type, L.shape, nnz / L.numel if L.numel else 1.0, nnz,
                                   aliases=L.aliases, dtype=_dtype_name(L.param)))
        if nnz < L.numel:
            compact[L.fqn] = CompactMask.from_bool(mask, density_hint=nnz / L.numel)
    ticket = Ticket(method, float(density), int(seed), None, True, records, compact, dict(options), kind="learned",
                    rng=RNG_ID, sparsekit_version=__version__, layouts={L.fqn: L.layout for L in layers},
                    file_fingerprint=model_fingerprint(model))
    attach(model, compact)
    ticket.model_ref = weakref.ref(model)
    _remember_ticket(model, ticket)
    return ticket


def _keep_count(layers: Sequence[Layer], density: float) -> int:
    return round(density * sum(L.numel for L in layers))


# --------------------------------------------------------------------------------------------------
# Magnitude


def magnitude(model: nn.Module, density: float, *, scope: str = "global", filter_fn: FilterFn | None = None
              ) -> Ticket:
    """Prune ``model`` by weight magnitude: keep the ``density`` fraction of weights with the largest ``|w|``.

    The one-shot counterpart of ``torch.nn.utils.prune``: ``scope="global"`` ranks all masked weights together
    (``prune.global_unstructured`` with ``L1Unstructured``), ``scope="layerwise"`` keeps
    ``round(density * m_l)`` weights in every layer (``prune.l1_unstructured`` per layer). Ties are broken
    by position, so the result is deterministic. No flow repair: layers may lose every weight.

    Args:
        model: the network (pruned in place: the masks are attached).
        density: fraction of weights kept, in (0, 1].
        scope: ``"global"`` or ``"layerwise"``.
        filter_fn: which layers to mask (default: every supported layer except embeddings).

    Returns:
        A ticket of kind ``"learned"`` (method ``"magnitude"`` or ``"magnitude-layerwise"``), masks attached.
    """
    density = validate_density(density)
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    layers = prunable_layers(_check_model(model, "magnitude"), filter_fn)
    if any(L.param.is_meta for L in layers):
        raise SparsekitError("magnitude pruning ranks the weights' values, but the model is on the meta device; "
                             "load its weights first")
    scores = {L.fqn: L.param.detach().abs() for L in layers}
    if scope == "global":
        masks = global_topk(scores, _keep_count(layers, density))
    else:
        masks = {}
        for L in layers:
            masks.update(global_topk({L.fqn: scores[L.fqn]}, round(density * L.numel)))
    warn_collapse("magnitude", [f for f, m in masks.items() if not m.any()])
    name = "magnitude" if scope == "global" else "magnitude-layerwise"
    return _learned_ticket(model, layers, masks, name, density, {})


# --------------------------------------------------------------------------------------------------
# SNIP


def _batches(data: Any, batches: int, batch_size: int, seed: int) -> Iterator[Any]:
    """Up to ``batches`` batches of ``data``: a DataLoader (or any iterable of batches) as given, a
    Dataset in a permutation drawn from ``seed``, or one ``(inputs, targets)`` pair of tensors."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        yield data
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        n = len(data)
        if n == 0:
            raise ValueError("data is an empty Dataset")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g)
        for b in range(min(batches, math.ceil(n / batch_size))):
            idx = order[b * batch_size:(b + 1) * batch_size]
            if isinstance(data, TensorDataset):
                yield [t[idx] for t in data.tensors]
            else:
                from torch.utils.data import default_collate

                yield default_collate([data[int(i)] for i in idx])
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError("data must be a DataLoader (or an iterable of (input, target) batches), a Dataset of "
                        f"(input, target) pairs or an (inputs, targets) pair of tensors; got {type(data).__name__}")
    for b, batch in enumerate(data):
        if b >= batches:
            break
        yield batch


def snip_scores(
    model: nn.Module,
    data: Any,
    *,
    batches: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    filter_fn: FilterFn | None = None,
    layers: Sequence[Layer] | None = None,
) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity ``|g * w|`` per weight (Lee et al. 2019; paper §3, Table 2).

    ``g`` is the gradient of the loss summed over ``batches`` batches, computed in eval mode (as in
    the SynFlow authors' code the paper builds on, App. A.7), so BatchNorm statistics do not change;
    the model is left exactly as it was.

    Args:
        model: the network (not pruned).
        data: a DataLoader (its first ``batches`` batches are used), a Dataset (``batches`` batches of
            ``batch_size`` in a permutation drawn from ``seed``) or one ``(inputs, targets)`` pair.
        batches: how many batches the gradient sums over (Lee et al.: one).
        batch_size: batch size for a Dataset.
        seed: order of a Dataset's samples.
        loss_fn: ``(logits, targets) -> loss``; default cross-entropy.
        filter_fn: which layers to score (default: every prunable layer, as in ``prune``).
        layers: already discovered layers (overrides ``filter_fn``).

    Returns:
        ``{fqn: scores}`` with each weight's shape, on the weight's device.
    """
    _check_model(model, "snip")
    batches = _positive_int(batches, "batches")
    batch_size = _positive_int(batch_size, "batch_size")
    layers = list(layers) if layers is not None else prunable_layers(model, filter_fn)
    _check_live(layers, "snip")
    loss_fn = loss_fn or F.cross_entropy
    device = layers[0].param.device
    used = 0
    with _scoring(model, layers), torch.enable_grad():
        for batch in _batches(data, batches, batch_size, seed):
            x, y = _split_batch(batch)
            out = model(_to(x, device))
            loss_fn(out.float(), _to(y, device)).backward()
            used += 1
        if used == 0:
            raise ValueError("data gave no batches; snip needs at least one (input, target) batch")
        scores = {}
        for L in layers:
            g = L.param.grad
            scores[L.fqn] = torch.zeros_like(L.param, dtype=torch.float32) if g is None else \
                (g.detach() * L.param.detach()).abs().float()
    return scores


def snip(
    model: nn.Module,
    data: Any,
    density: float,
    batches: int = 1,
    *,
    batch_size: int = 128,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    filter_fn: FilterFn | None = None,
) -> Ticket:
    """Prune ``model`` with SNIP: keep the ``density`` fraction of weights with the highest ``|g * w|``.

    Single-shot pruning at initialisation (Lee et al. 2019), a baseline of the paper (§3, Tables 2-3):
    scores from :func:`snip_scores`, then global top-k over all masked layers, so the global density
    is met exactly. No flow repair: layers may collapse (lose every weight) at extreme sparsity,
    which is what breaks ER(SNIP) down in the paper's Table 2.

    Args:
        model: the network (pruned in place: the masks are attached).
        data: batches to score with (see :func:`snip_scores`).
        density: global fraction of weights kept, in (0, 1].
        batches: number of batches the gradient sums over.
        batch_size, seed, loss_fn, filter_fn: as in :func:`snip_scores`.

    Returns:
        A ticket of kind ``"learned"`` (method ``"snip"``), masks attached to ``model``.

    Example:
        >>> ticket = sparsekit.snip(model, train_loader, density=0.05)
        >>> sparsekit.fit_weak(model, train, eval_data=test, epochs=160)
    """
    density = validate_density(density)
    layers = prunable_layers(_check_model(model, "snip"), filter_fn)
    scores = snip_scores(model, data, batches=batches, batch_size=batch_size, seed=seed, loss_fn=loss_fn,
                         layers=layers)
    masks = global_topk(scores, _keep_count(layers, density))
    warn_collapse("snip", [f for f, m in masks.items() if not m.any()])
    return _learned_ticket(model, layers, masks, "snip", density, {"batches": batches, "batch_size": batch_size},
                           seed)


# --------------------------------------------------------------------------------------------------
# SynFlow


def infer_input_shape(layers: Sequence[Layer], input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape`` checked, or ``(in_features,)`` when the first layer is Linear."""
    if input_shape is not None:
        if isinstance(input_shape, int) and not isinstance(input_shape, bool):
            input_shape = (input_shape,)
        shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ValueError(f"input_shape must be the shape of one input sample without the batch dimension, e.g. "
                             f"(3, 32, 32) or (64,); got {input_shape!r}")
        if math.prod(shape) > 2**28:
            raise ValueError(f"input_shape {shape} has {math.prod(shape):,} elements per sample, over the limit of "
                             f"{2**28:,}; give the shape of one sample, e.g. (3, 32, 32)")
        return shape
    first = layers[0]
    if first.module_type == "Linear":
        return (first.shape[1],)
    raise ValueError(f"synflow feeds an all-ones input and cannot infer its shape when the first layer is a "
                     f"{first.module_type} ({first.fqn}); pass input_shape=(C, H, W) for one sample, e.g. "
                     "input_shape=(3, 32, 32) for CIFAR")


def _synflow_objective(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``R = sum(f(1))`` for the linearised model, checked to be finite."""
    with torch.enable_grad():
        try:
            out = model(x)
        except RuntimeError as e:
            raise SparsekitError(f"synflow's all-ones input of shape {tuple(x.shape[1:])} does not fit the model "
                                 f"({str(e).splitlines()[0]}); pass input_shape= (one sample, no batch "
                                 "dimension)") from e
        if not isinstance(out, torch.Tensor):
            raise SparsekitError(f"synflow needs a model returning a tensor, got {type(out).__name__}")
        objective = out.sum()
    if not torch.isfinite(objective):
        raise SparsekitError(f"SynFlow's objective R overflowed in {x.dtype} ({objective.item()}); prune a float64 "
                             "copy of the model (model.double()) and attach its ticket to the original")
    return objective


def _linearise(model: nn.Module) -> None:
    """Absolute values of every floating-point weight and buffer (Tanaka et al.'s ``linearize``)."""
    seen: set[int] = set()
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                t.abs_()


def synflow_scores(
    model: nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    filter_fn: FilterFn | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """SynFlow scores ``|w * dR/dw|`` with ``R = 1^T (prod_l |W_l|) 1`` (Tanaka et al. 2020).

    Data-free: one forward pass of an all-ones input (batch of one) through the model with every
    weight and buffer replaced by its absolute value, in eval mode (BatchNorm uses its absolute
    running statistics and affine parameters, as in the original code). The model is left as it was.

    Args:
        model: the network (not pruned).
        input_shape: shape of one sample, e.g. ``(3, 32, 32)``; inferred when the first layer is Linear.
        filter_fn: which layers to score.
        masks: ``{fqn: bool mask}``: score the network with these weights removed (pruned entries
            score 0).

    Returns:
        ``{fqn: scores}`` in each weight's shape and dtype.
    """
    layers = prunable_layers(_check_model(model, "synflow"), filter_fn)
    _check_live(layers, "synflow")
    shape = infer_input_shape(layers, input_shape)
    with _scoring(model, layers):
        _linearise(model)
        if masks is not None:
            with torch.no_grad():
                for L in layers:
                    if L.fqn in masks:
                        L.param.mul_(masks[L.fqn].to(L.param.device, L.param.dtype))
        x = torch.ones((1, *shape), dtype=layers[0].param.dtype, device=layers[0].param.device)
        with torch.enable_grad():
            _synflow_objective(model, x).backward()
        scores = {L.fqn: torch.zeros_like(L.param) if L.param.grad is None else
                  (L.param.grad * L.param.detach()).abs() for L in layers}
    return scores


def synflow_masks(model: nn.Module, layers: Sequence[Layer], density: float, iterations: int,
                  input_shape: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Iterative SynFlow's bool masks for ``layers`` (see :func:`synflow`); the model is left as it was."""
    _check_live(layers, "synflow")
    iterations = _positive_int(iterations, "iterations")
    shape = infer_input_shape(layers, input_shape)
    total = sum(L.numel for L in layers)
    kept = {L.fqn: torch.arange(L.numel, device=L.param.device) for L in layers}
    with _scoring(model, layers):
        _linearise(model)
        absolute = {L.fqn: L.param.detach().reshape(-1).clone() for L in layers}
        x = torch.ones((1, *shape), dtype=layers[0].param.dtype, device=layers[0].param.device)
        for k in range(1, iterations + 1):
            if k > 1:  # the network with the pruned weights removed
                with torch.no_grad():
                    for L in layers:
                        flat = L.param.data.view(-1)
                        flat.zero_()
                        flat[kept[L.fqn]] = absolute[L.fqn][kept[L.fqn]]
            for L in layers:
                L.param.grad = None
            objective = _synflow_objective(model, x)
            objective.backward()
            scores = {}
            for L in layers:
                g = L.param.grad
                idx = kept[L.fqn]
                scores[L.fqn] = (g.reshape(-1)[idx] * L.param.detach().reshape(-1)[idx]).abs() if g is not None \
                    else torch.zeros(idx.numel(), dtype=L.param.dtype, device=idx.device)
            kept = _prune_kept(scores, kept, round(density ** (k / iterations) * total), "synflow")
    return {L.fqn: _index_mask(L.shape, kept[L.fqn]) for L in layers}


def synflow(
    model: nn.Module,
    density: float,
    iterations: int = 100,
    *,
    input_shape: Sequence[int] | None = None,
    filter_fn: FilterFn | None = None,
) -> Ticket:
    """Prune ``model`` with iterative SynFlow (Tanaka et al. 2020), a data-free baseline of the paper.

    In each of ``iterations`` steps the SynFlow scores of the remaining weights are recomputed
    (:func:`synflow_scores` on the masked network) and the network is pruned globally to
    ``density ** (k / iterations)``: the exponential schedule, which avoids layer collapse (no layer
    loses all its weights) even at density 0.001 (paper Table 2: ER(SynFlow) keeps working at
    0.999 sparsity). The final global density is met exactly.

    Args:
        model: the network (pruned in place: the masks are attached; the weights are unchanged).
        density: global fraction of weights kept, in (0, 1].
        iterations: pruning steps (Tanaka et al.: 100).
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)``; inferred when the first
            layer is Linear.
        filter_fn: which layers to prune (default: every prunable layer).

    Returns:
        A ticket of kind ``"learned"`` (method ``"synflow"``), masks attached to ``model``.

    Example:
        >>> ticket = sparsekit.synflow(get_model("vgg16"), density=0.01, input_shape=(3, 32, 32))
    """
    density = validate_density(density)
    layers = prunable_layers(_check_model(model, "synflow"), filter_fn)
    shape = infer_input_shape(layers, input_shape)
    masks = synflow_masks(model, layers, density, iterations, shape)
    warn_collapse("synflow", [f for f, m in masks.items() if not m.any()])
    return _learned_ticket(model, layers, masks, "synflow", density,
                           {"iterations": iterations, "input_shape": list(shape)})


# --------------------------------------------------------------------------------------------------
# IMP


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    import io

    buf = io.BytesIO()
    torch.save(tensors, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from ._safety import check_regular_file

    check_regular_file(path, "IMP state file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure means the run folder is damaged
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SparsekitError(f"cannot read {path}: {first}; start the IMP run in a new checkpoint_dir") from None


class _ImpRound(Algorithm):
    """One IMP training round: trains the kept weights (like fit_weak) and, in the first round, keeps
    the rewind weights of epoch ``capture_epoch`` in its checkpointed state (so resume never loses them)."""

    name = "imp"

    def __init__(self, capture_epoch: int | None) -> None:
        self.capture_epoch = capture_epoch
        self.snapshot: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, state: Any) -> dict[str, float]:
        if self.capture_epoch is not None and state.epoch + 1 == self.capture_epoch:
            self.snapshot = _snapshot(state.model)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.snapshot is None else {"rewind": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshot = state.get("rewind")


def _magnitude_masks(layers: Sequence[Layer], current: Mapping[str, torch.Tensor] | None,
                     density: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning among the currently kept weights (all when ``current`` is None) to ``density``."""
    kept = {L.fqn: torch.arange(L.numel, device=L.param.device) if current is None else
            torch.nonzero(current[L.fqn].to(L.param.device).reshape(-1)).flatten() for L in layers}
    scores = {L.fqn: L.param.detach().reshape(-1)[kept[L.fqn]].abs() for L in layers}
    kept = _prune_kept(scores, kept, _keep_count(layers, density), "IMP's magnitude")
    return {L.fqn: _index_mask(L.shape, kept[L.fqn]) for L in layers}


def _write_state(ckdir: Path, key: dict[str, Any], completed: int, densities: list[float]) -> None:
    state = {"format": _IMP_FORMAT, "version": _IMP_VERSION, "completed_rounds": completed,
             "densities": densities, "config": key}
    atomic_write_bytes(ckdir / IMP_STATE_NAME, (json.dumps(state, indent=2) + "\n").encode())


def _read_state(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SparsekitError(f"cannot read {path}: {e}; start the IMP run in a new checkpoint_dir") from None
    if not isinstance(state, dict) or state.get("format") != _IMP_FORMAT:
        raise SparsekitError(f"{path} is not an IMP state file")
    if state.get("version") != _IMP_VERSION:
        raise SparsekitError(f"{path} has IMP state version {state.get('version')}; this sparsekit reads "
                             f"{_IMP_VERSION}: resume with the sparsekit that wrote it")
    saved = state.get("config", {})
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {key.get(k)!r}" for k in sorted(set(saved) | set(key))
            if saved.get(k) != key.get(k)]
    if diff:
        raise SparsekitError(f"cannot resume the IMP run in {path.parent}: its settings differ ({'; '.join(diff)}); "
                             "resume with the same settings or start a new run in another checkpoint_dir")
    completed = state.get("completed_rounds")
    if not isinstance(completed, int) or not 0 <= completed <= key["rounds"]:
        raise SparsekitError(f"{path}: bad completed_rounds {completed!r}")
    return state


def _round_history(path: Path) -> History:
    if not path.exists():
        return History()
    return History(_stats_from_dict(d) for d in json.loads(path.read_text()))


def imp(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    density: float,
    rounds: int,
    epochs_per_round: int,
    *,
    rewind_epoch: int = 0,
    eval_data: Dataset | DataLoader | None = None,
    filter_fn: FilterFn | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "multistep",
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    device: str | torch.device = "auto",
    amp: str | None = "auto",
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    num_workers: int | None = None,
) -> Ticket:
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019), the paper's IMP baseline.

    Round ``r`` (1..``rounds``) trains the current network for ``epochs_per_round`` epochs on the
    :func:`sparsekit.fit_weak` engine (fresh optimizer and schedule each round), prunes the weights of
    smallest magnitude globally to density ``density ** (r / rounds)`` (pruned weights stay pruned)
    and rewinds every parameter and buffer to its value after ``rewind_epoch`` epochs of the first,
    dense round (0: the initialisation; Frankle et al. 2020 rewind to an early epoch). The paper uses
    25 rounds (App. A.7; it calls them levels) and Tables 2-3 randomise the resulting ratios
    (``er-from``). The returned network is the lottery ticket: the final masks on the rewound
    weights, ready for :func:`sparsekit.fit_weak`.

    With ``checkpoint_dir``, round ``r`` keeps the engine's per-epoch checkpoints in
    ``round-<r>/``, the masks after each round are written as ticket files ``ticket-<r>.safetensors``
    (usable on their own, e.g. with ``er-from``), the initial and rewind weights as ``init.pt`` and
    ``rewind.pt``, and a small state file :data:`IMP_STATE_NAME` (written atomically) records the
    completed rounds. ``resume=True`` continues an interrupted run exactly, from a fresh model.

    Args:
        model: the dense network (trained and pruned in place, left on ``device``).
        train_data: a Dataset of ``(input, target)`` pairs or a DataLoader.
        density: final global density, in (0, 1].
        rounds: number of prune-rewind rounds (paper: 25).
        epochs_per_round: training epochs before each pruning step.
        rewind_epoch: rewind to the weights after this many epochs of the first round (0 = init).
        eval_data: evaluated after every epoch.
        filter_fn: which layers to prune (default: every prunable layer).
        lr, momentum, weight_decay, batch_size, schedule, device, amp, seed, callbacks, progress,
            loss_fn, num_workers: as in :func:`sparsekit.fit_weak`, for every round.
        optimizer: a factory ``params -> Optimizer`` (each round builds a fresh one); default SGD.
        checkpoint_dir: folder for per-round checkpoints, tickets and the state file.
        resume: continue the run in ``checkpoint_dir``.

    Returns:
        A ticket of kind ``"learned"`` (method ``"imp"``) attached to ``model``, whose weights are the
        rewound ones; ``ticket.history`` holds one :class:`~sparsekit.train.History` per round.

    Example:
        >>> ticket = sparsekit.imp(model, train, 0.05, rounds=10, epochs_per_round=20, rewind_epoch=1,
        ...                        eval_data=test, checkpoint_dir="runs/imp")
        >>> sparsekit.fit_weak(model, train, eval_data=test, epochs=160)   # train the ticket
    """
    density = validate_density(density)
    rounds = _positive_int(rounds, "rounds")
    epochs_per_round = _positive_int(epochs_per_round, "epochs_per_round")
    if isinstance(rewind_epoch, bool) or not isinstance(rewind_epoch, int) or \
            not 0 <= rewind_epoch <= epochs_per_round:
        raise ValueError(f"rewind_epoch must be an int in [0, epochs_per_round={epochs_per_round}] (0 rewinds to the "
                         f"initialisation), got {rewind_epoch!r}")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("imp trains a fresh optimizer in every round: pass a factory, e.g. "
                        "optimizer=lambda params: torch.optim.Adam(params, lr=1e-3)")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir: the folder the interrupted IMP run wrote to")
    config = TrainConfig(epochs=epochs_per_round, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         batch_size=batch_size, schedule=schedule, seed=seed, amp=amp, num_workers=num_workers,
                         device=device if isinstance(device, str) else str(device))
    layers = prunable_layers(_check_model(model, "imp"), filter_fn)
    _check_live(layers, "imp")
    key = {"density": density, "rounds": rounds, "epochs_per_round": epochs_per_round, "rewind_epoch": rewind_epoch,
           "layers": [L.fqn for L in layers], "train": config.resume_key()}
    options = {"rounds": rounds, "epochs_per_round": epochs_per_round, "rewind_epoch": rewind_epoch}
    densities = [density ** (r / rounds) for r in range(1, rounds + 1)]
    console = None
    if progress:
        from rich.console import Console

        console = Console(highlight=False)

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = None
    if ckdir is not None:
        if ckdir.exists() and not ckdir.is_dir():
            raise NotADirectoryError(f"checkpoint_dir {ckdir} is a file; give a folder")
        path = ckdir / IMP_STATE_NAME
        if path.exists():
            if not resume:
                raise FileExistsError(f"{path} exists from an earlier IMP run; pass resume=True (CLI: --resume) to "
                                      "continue it, or choose another checkpoint_dir")
            state = _read_state(path, key)
        ckdir.mkdir(parents=True, exist_ok=True)

    completed = 0 if state is None else state["completed_rounds"]
    if state is None:
        init = _snapshot(model)
        if ckdir is not None:
            _save_tensors(ckdir / "init.pt", init)
            _write_state(ckdir, key, 0, densities)
    else:
        init = _load_tensors(ckdir / "init.pt")  # type: ignore[operator]
        model.load_state_dict(init)
    rewind: dict[str, torch.Tensor] | None = init if rewind_epoch == 0 else None
    if rewind is None and completed > 0:
        rewind = _load_tensors(ckdir / "rewind.pt")  # type: ignore[operator]
    histories: list[History] = []
    ticket: Ticket | None = None
    masks: dict[str, torch.Tensor] | None = None
    if completed > 0:
        from .formats.ticket_file import load_ticket

        saved = load_ticket(ckdir / f"ticket-{completed:02d}.safetensors")  # type: ignore[operator]
        masks = {L.fqn: saved.mask(L.fqn) for L in layers}
        model.load_state_dict(rewind)  # type: ignore[arg-type]
        ticket = _learned_ticket(model, layers, masks, "imp", densities[completed - 1], options, seed)
        histories = [_round_history(ckdir / f"round-{r:02d}" / "history.json")  # type: ignore[operator]
                     for r in range(1, completed + 1)]
        if console is not None:
            console.print(f"IMP: resumed after round {completed}/{rounds} (density {densities[completed - 1]:.4g})")

    for r in range(completed + 1, rounds + 1):
        algo = _ImpRound(rewind_epoch if r == 1 and rewind_epoch > 0 else None)
        if console is not None:
            now = densities[r - 2] if r > 1 else 1.0
            console.print(f"IMP round {r}/{rounds}: train at density {now:.4g}, then prune to {densities[r - 1]:.4g}")
        history = run(model, train_data, config, algorithm=algo, eval_data=eval_data, optimizer=optimizer,
                      loss_fn=loss_fn, callbacks=callbacks,
                      checkpoint_dir=ckdir / f"round-{r:02d}" if ckdir is not None else None, resume=resume,
                      progress=progress)
        histories.append(history)
        if r == 1 and rewind_epoch > 0:
            if algo.snapshot is None:
                raise SparsekitError(f"the rewind weights of epoch {rewind_epoch} were not captured")
            rewind = algo.snapshot
            if ckdir is not None:
                _save_tensors(ckdir / "rewind.pt", rewind)
        masks = _magnitude_masks(layers, masks, densities[r - 1])
        finalize(model)
        model.load_state_dict(rewind)  # type: ignore[arg-type]
        ticket = _learned_ticket(model, layers, masks, "imp", densities[r - 1], options, seed)
        if ckdir is not None:
            from .formats.ticket_file import save_ticket

            save_ticket(ticket, ckdir / f"ticket-{r:02d}.safetensors", overwrite=True)
            _write_state(ckdir, key, r, densities)
    if ticket is None:  # unreachable: rounds >= 1
        raise SparsekitError("IMP ran no round")
    ticket.history = histories  # type: ignore[attr-defined]
    return ticket


def warn_collapse(what: str, collapsed: Sequence[str], note: str = "") -> None:
    """Warn that ``what`` removed every weight of the ``collapsed`` layers (layer collapse, paper §3)."""
    if collapsed:
        warnings.warn(f"{what} removed every weight of {len(collapsed)} layer(s) ({', '.join(collapsed[:3])}"
                      f"{', ...' if len(collapsed) > 3 else ''}): layer collapse (paper §3){note}", stacklevel=3)
