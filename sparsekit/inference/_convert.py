"""``sparse_inference``: a copy of a pruned model whose sparse layers compute with sparse kernels."""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._wrappers import unwrap
from ..errors import SparsekitError
from ._kernels import (
    BSRKernel,
    CondensedKernel,
    CSRKernel,
    _Kernel,
    condensed_width,
    detect_blocks,
)
from ._modules import SparseConv2d, SparseLinear, SparseMultiheadAttention, is_sparse_module

__all__ = ["sparse_inference", "inference_report", "InferenceReport", "LayerChoice", "KERNELS"]

#: every representation sparse_inference can choose; ``dense`` keeps the original module
KERNELS: tuple[str, ...] = ("dense", "csr", "bsr", "condensed")
_REPORT_ATTR = "_sparsekit_inference_report"
#: per-layer timing: rounds continue (up to 10 x ``repeats``) until this many seconds are spent
MIN_TIME_S = 0.2


@dataclass
class LayerChoice:
    """What :func:`sparse_inference` chose for one weight and why.

    Times are the fastest of interleaved rounds, in milliseconds, of the layer alone on the input it
    received from ``sample_input`` (or a synthetic ``(batch_size, in_features)`` input); ``times_ms``
    has every candidate measured. A sparse kernel is chosen only if it beats dense by the margin in
    both its fastest and its median round.
    ``bytes`` is what the layer holds now (weight and bias), ``dense_bytes`` what it held before.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    density: float
    kernel: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    times_ms: dict[str, float] = field(default_factory=dict)
    dense_bytes: int = 0
    bytes: int = 0
    nnz: int = 0
    input_shape: tuple[int, ...] | None = None
    reason: str = ""
    convertible: bool = True  # False: no sparse kernel exists for this module type

    @property
    def speedup(self) -> float | None:
        """Dense time over the chosen kernel's time (1.0 when dense was kept after measuring)."""
        if self.dense_ms is None:
            return None
        t = self.times_ms.get(self.kernel.split(" ")[0]) if self.kernel != "dense" else self.dense_ms
        return None if not t else self.dense_ms / t


@dataclass
class InferenceReport:
    """The per-layer choices of :func:`sparse_inference` and the model's memory before and after.

    ``baseline_bytes`` is the floor the goal is measured against: every kept value of a sparse layer
    plus one int32 index per kept value, and every other parameter and buffer as it is.
    """

    layers: list[LayerChoice]
    dense_bytes: int
    bytes: int
    baseline_bytes: int
    sample_shapes: list[tuple[int, ...]] | None
    max_abs_error: float | None
    settings: dict[str, Any]

    @property
    def memory_ratio(self) -> float:
        """Model bytes over ``baseline_bytes`` (the goal is <= 1.2 when every sparse layer is converted)."""
        return self.bytes / self.baseline_bytes if self.baseline_bytes else float("nan")

    def choices(self) -> dict[str, str]:
        """``{layer: kernel}`` for every convertible layer: pass it as ``sparse_inference(..., choices=)``
        to rebuild the same model without measuring (e.g. measured once on a quiet machine)."""
        return {lc.name: lc.kernel.split(" ")[0] for lc in self.layers if lc.convertible}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["memory_ratio"] = self.memory_ratio
        for row, lc in zip(d["layers"], self.layers, strict=True):
            row["speedup"] = lc.speedup
        return d

    def table(self) -> str:
        """A plain-text table: layer, shape, density, kernel, dense and chosen time, bytes, reason."""
        head = ("layer", "shape", "density", "kernel", "dense ms", "chosen ms", "bytes", "dense bytes", "note")
        rows = []
        for lc in self.layers:
            chosen = lc.dense_ms if lc.kernel == "dense" else lc.times_ms.get(lc.kernel.split(" ")[0])
            rows.append((lc.name, "x".join(map(str, lc.shape)), f"{lc.density:.4g}", lc.kernel,
                         _ms(lc.dense_ms), _ms(chosen), _mb(lc.bytes), _mb(lc.dense_bytes), lc.reason))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(f"model weights: {_mb(self.bytes)} (dense {_mb(self.dense_bytes)}; kept values + int32 "
                     f"indices {_mb(self.baseline_bytes)}; ratio {self.memory_ratio:.3f})")
        if self.max_abs_error is not None:
            lines.append(f"verified against the dense model on sample_input: max |error| {self.max_abs_error:.3g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}M" if n >= 2**20 else f"{n / 2**10:.1f}K"


def inference_report(model: nn.Module) -> InferenceReport:
    """The :class:`InferenceReport` of a model returned by :func:`sparse_inference`."""
    rep = getattr(unwrap(model), _REPORT_ATTR, None)
    if rep is None:
        raise SparsekitError(f"{type(model).__name__} was not made by sparsekit.sparse_inference; "
                             f"call sparse_inference(model, sample_input) first")
    return rep


# ----------------------------------------------------------------------------------------------------
# units: one weight matrix each (a Linear, a Conv2d as out x in*kh*kw, one projection of an attention)


@dataclass
class _Unit:
    name: str
    kind: str
    weight: torch.Tensor  # 2-D view used by the kernels
    orig_shape: tuple[int, ...]
    bias: torch.Tensor | None
    module: nn.Module
    candidates: dict[str, _Kernel] = field(default_factory=dict)
    choice: LayerChoice | None = None  # the decision, once made
    pending: LayerChoice | None = None  # the row being filled while measuring
    measured: bool = False
    forced: bool = False  # must stay dense whatever is measured or chosen (the reason is in the row)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _kernels_for(w: torch.Tensor, allowed: Sequence[str]) -> dict[str, _Kernel]:
    out: dict[str, _Kernel] = {}
    if "csr" in allowed:
        out["csr"] = CSRKernel(w)
    if "bsr" in allowed:
        block = detect_blocks(w, square_only=True)  # MKL (CPU) and cuSPARSE multiply square blocks
        if block is not None:
            out["bsr"] = BSRKernel(w, block)
    if "condensed" in allowed:
        k = condensed_width(w)
        if k is not None:
            out["condensed"] = CondensedKernel(w, k)
    return out


def _label(name: str, kernel: _Kernel) -> str:
    if isinstance(kernel, BSRKernel):
        return f"bsr {kernel.block[0]}x{kernel.block[1]}"
    if isinstance(kernel, CondensedKernel):
        return f"condensed k={kernel.k}"
    return name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
             budget_s: float) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
    """Fastest ms of each function over interleaved rounds (rotating order); slow or failing ones dropped.

    The minimum, not the median: on a shared machine other processes only ever add time, and the
    minimum is the stable estimate of a kernel's own cost (as ``timeit`` recommends).
    """
    errors: dict[str, str] = {}
    first: dict[str, float] = {}
    for name, fn in fns.items():
        try:
            fn()  # warm-up (and the check that it runs at all)
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            first[name] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run is reported, not raised
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    if "dense" in first:  # a candidate 4x slower than dense, twice, cannot win: stop timing it
        for name in [n for n in first if n != "dense" and first[n] > 4 * first["dense"] + 1e-4]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            first[name] = min(first[name], time.perf_counter() - t0)
            if first[name] > 4 * first["dense"] + 1e-4:
                errors.setdefault(name, "")
    samples: dict[str, list[float]] = {n: [t] for n, t in first.items() if n not in errors}
    names = list(samples)
    start = time.perf_counter()
    r = 0
    while names:
        # at least `repeats` rounds (fewer only past `budget_s`); with repeats >= 5 fast layers get more
        # rounds, up to 10 x repeats within MIN_TIME_S, so that on a busy machine one escapes preemption
        spent = time.perf_counter() - start
        if r >= repeats - 1 and (repeats < 5 or spent > MIN_TIME_S or r >= 10 * repeats):
            break
        if r >= 2 and spent > budget_s:
            break
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        for name in order:
            fn = fns[name]
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
        r += 1
    times = {n: min(s) * 1e3 for n, s in samples.items()}  # noise only adds time: the fastest round
    medians = {n: statistics.median(s) * 1e3 for n, s in samples.items()}
    for n in first:
        if n in errors and not errors[n]:
            times[n] = medians[n] = first[n] * 1e3  # measured once (clearly slower): kept for the report
            del errors[n]
    return times, errors, medians


# ----------------------------------------------------------------------------------------------------


def sparse_inference(
    model: nn.Module,
    sample_input: torch.Tensor | Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    batch_size: int = 1,
    kernels: Iterable[str] = KERNELS,
    max_density: float = 0.5,
    margin: float = 0.1,
    repeats: int = 7,
    exclude: Iterable[str] = (),
    inplace: bool = False,
    choices: Mapping[str, str] | None = None,
    verify: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> nn.Module:
    """Return a copy of a pruned model whose sparse layers compute with sparse weights (inference only).

    Works on any model whose pruned weights are exactly zero: a model pruned with :func:`sparsekit.prune`
    or :func:`sparsekit.apply_ticket` (masks keep the pruned weights at zero) or one finalized with
    :func:`sparsekit.finalize` or loaded from a file with the zeros baked in. The representation of each
    weight is chosen from its zero pattern and a measurement, never from the method that made it:

    - ``csr`` for any pattern; ``bsr`` when the nonzeros fill whole blocks (32x32 ... 1x4; block-ER);
      ``condensed`` (values and indices ``out x k``, a gather and a small product; SRigL's condensed
      layer) when every row keeps about the same number ``k`` of inputs (constant fan-in ER);
    - ``dense``: the original module stays. A sparse kernel replaces it only if it measured at least
      ``margin`` faster than dense on the layer's own input, so the model is never slower than dense
      (within timing noise).

    ``nn.Linear``, ``nn.Conv2d`` (``groups=1``; k x k through im2col, 1x1 as a matmul) and
    ``nn.MultiheadAttention`` (q, k, v and out projections chosen separately) are converted. Other
    modules with sparse weights stay dense and are named in a warning and in the report. The sparse
    modules hold the weight only in sparse form (memory falls with density; int32 indices) and are
    inference-only: they raise in training mode, when their input requires grad, and on export.

    The speed of a kernel depends on the batch: pass the ``sample_input`` you will run (batch 1 vs 32
    may choose differently). Without it, Linear and attention layers are measured on a random
    ``(batch_size, in_features)`` input and convolutions stay dense (their spatial size is unknown).
    With it, the converted model is checked against the dense model on the sample (``verify``).

    Args:
        model: the pruned model (not modified unless ``inplace``). A ``torch.compile`` /
            ``DistributedDataParallel`` / ``DataParallel`` wrapper is looked through, as everywhere in
            sparsekit (layer names are the inner module's, like the ticket's); the converted inner
            module is returned.
        sample_input: an input like the ones you will run: a tensor, a tuple of positional arguments or
            a dict of keyword arguments.
        batch_size: rows of the synthetic input used when ``sample_input`` is None.
        kernels: the representations allowed. Leave out ``"dense"`` to convert every sparse layer to its
            fastest sparse kernel even where dense is faster (smallest memory).
        max_density: layers denser than this stay dense without measuring.
        margin: a sparse kernel must be this fraction faster than dense to replace it.
        repeats: timing rounds per layer (interleaved so machine noise hits all alike; the fastest
            round counts). With ``repeats >= 5`` fast layers get more rounds (up to 10x) within 0.2 s.
        exclude: names (fqns) of modules to keep dense.
        inplace: convert ``model`` itself instead of a deep copy (saves the copy's memory; on an error
            the model may be left partly converted, and a model that is itself one layer is replaced,
            not changed: use the returned module).
        choices: ``{layer: kernel}`` decided beforehand (e.g. ``inference_report(fast).choices()`` from a
            run on a quiet machine): those layers are not measured. Layer names as in the report
            (attention projections are ``<attn>.q_proj`` ... ``<attn>.out_proj``).
        verify: compare the outputs on ``sample_input`` with the dense model; raise if they differ.
        rtol: relative tolerance of that check (at least 64 rounding units of the output dtype).
        atol: absolute tolerance of that check, scaled by the largest absolute output (same floor).

    Returns:
        The model in eval mode; :func:`inference_report` gives the per-layer table.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparse_inference: model must be an nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    allowed = tuple(kernels) if not isinstance(kernels, str) else (kernels,)
    bad = [k for k in allowed if k not in KERNELS]
    if bad or not allowed:
        raise SparsekitError(f"sparse_inference: kernels={allowed!r}: expected a non-empty subset of {KERNELS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SparsekitError(f"sparse_inference: batch_size must be a positive int, got {batch_size!r}")
    for arg, v, lo, hi in (("max_density", max_density, 0.0, 1.0), ("margin", margin, 0.0, 10.0)):
        if not isinstance(v, (int, float)) or not (lo <= v <= hi) or math.isnan(v):
            raise SparsekitError(f"sparse_inference: {arg} must be in [{lo}, {hi}], got {v!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SparsekitError(f"sparse_inference: repeats must be a positive int, got {repeats!r}")
    excluded = {exclude} if isinstance(exclude, str) else set(exclude)
    names = dict(model.named_modules())
    unknown = sorted(excluded - set(names))
    if unknown:
        raise SparsekitError(f"sparse_inference: exclude names no module: {unknown}; module names are "
                             f"those of model.named_modules()")
    if any(is_sparse_module(m) for m in model.modules()):
        raise SparsekitError("sparse_inference: the model was already converted; convert the dense pruned model")

    net = model if inplace else copy.deepcopy(model)
    net.eval()
    settings = {"kernels": list(allowed), "max_density": max_density, "margin": margin, "repeats": repeats,
                "batch_size": batch_size, "sample_input": sample_input is not None}

    dense_before = _model_bytes(net)
    units, rows_other, owners = _plan(net, allowed, max_density, excluded)
    if choices:
        _apply_choices(units, choices)
    todo = [u for u in units if u.choice is None]

    ref = None
    sample_shapes = None
    if todo:
        if sample_input is not None:
            ref, sample_shapes = _measure_on_sample(net, todo, sample_input, allowed, margin, repeats)
        for u in todo:
            if not u.measured:
                _measure_synthetic(u, batch_size, allowed, margin, repeats)

    if verify and sample_input is not None and ref is None and any(u.candidates for u in units):
        ref = _reference(net, sample_input)  # every layer was decided by `choices`: still check the result
        sample_shapes = [tuple(t.shape) for t in _tensors(sample_input)]
    net, replaced = _replace(net, units, owners)
    _disable_fast_paths(net, replaced)

    max_err = None
    if verify and sample_input is not None and ref is not None and replaced:
        with torch.no_grad():
            got = _call(net, sample_input)
        max_err = _compare(ref, got, rtol, atol)

    rows = [u.choice for u in units if u.choice is not None] + rows_other
    base = _baseline_bytes(net, units)
    report = InferenceReport(layers=rows, dense_bytes=dense_before, bytes=_model_bytes(net), baseline_bytes=base,
                             sample_shapes=sample_shapes, max_abs_error=max_err, settings=settings)
    skipped = [r.name for r in rows_other if r.density <= max_density]
    if skipped:
        warnings.warn(f"sparse_inference: {len(skipped)} sparse weight(s) stay dense (no sparse kernel for their "
                      f"module type): {', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}; see "
                      f"inference_report(model)", stacklevel=2)
    failed = [r.name for r in rows if r.kernel == "dense" and "no sparse kernel ran" in r.reason]
    if failed:
        warnings.warn(f"sparse_inference: {len(failed)} layer(s) stay dense because no sparse kernel ran on them "
                      f"(e.g. {rows[[r.name for r in rows].index(failed[0])].reason.split('; ', 1)[-1]}): "
                      f"{', '.join(failed[:8])}{' ...' if len(failed) > 8 else ''}", stacklevel=2)
    object.__setattr__(net, _REPORT_ATTR, report)
    return net


def _model_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += _nbytes(t)
    return total


def _baseline_bytes(model: nn.Module, units: list[_Unit]) -> int:
    """Kept values + one int32 index per kept value for every unit, every other tensor as it is now."""
    total = 0
    skip: set[int] = set()
    for u in units:
        c = u.choice
        assert c is not None
        total += c.nnz * (u.weight.element_size() + 4) + _nbytes(u.bias)
        skip.update(id(t) for t in u.module.parameters())  # the unit's own tensors (attention: all of them)
        skip.update(id(t) for t in u.module.buffers())
    for m in model.modules():
        if is_sparse_module(m):
            skip.update(id(t) for t in m.parameters())
            skip.update(id(t) for t in m.buffers())
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in skip and id(t) not in seen:
            seen.add(id(t))
            total += _nbytes(t)
    return total


def _own_behaviour(m: nn.Module, base: type[nn.Module]) -> str:
    """Why replacing ``m`` by a sparse module of the ``base`` kind would lose something, or ""."""
    if type(m).forward is not base.forward:
        return f"{type(m).__name__} has its own forward (a subclass of {base.__name__}): kept dense"
    if m._forward_hooks or m._forward_pre_hooks:
        return "forward hooks or pre-hooks on the module (a replacement would drop them): kept dense"
    return ""


def _plan(net: nn.Module, allowed: Sequence[str], max_density: float,
          excluded: set[str]) -> tuple[list[_Unit], list[LayerChoice], dict[str, list[_Unit]]]:
    """Find every weight to decide on, build the sparse candidates, note what stays dense and why."""
    counts: dict[int, int] = {}
    for _, p in net.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    units: list[_Unit] = []
    other: list[LayerChoice] = []
    owners: dict[str, list[_Unit]] = {}
    skip_prefixes: list[str] = []

    def excluded_name(fqn: str) -> bool:
        return any(fqn == e or fqn.startswith(e + ".") for e in excluded) if fqn else "" in excluded

    for fqn, m in net.named_modules():
        if any(fqn.startswith(p + ".") for p in skip_prefixes):
            continue
        if isinstance(m, nn.MultiheadAttention):
            skip_prefixes.append(fqn)
            parts = _mha_parts(m)
            reason = ""
            if m.bias_k is not None or m.add_zero_attn:
                reason = "attention with add_bias_kv/add_zero_attn: kept dense"
            elif _own_behaviour(m, nn.MultiheadAttention):
                reason = _own_behaviour(m, nn.MultiheadAttention)
            elif any(counts.get(id(p), 1) > 1 for p in m.parameters(recurse=True)):
                reason = "a weight shared with another module: kept dense"
            elif excluded_name(fqn):
                reason = "excluded"
            for part, (w, b) in parts.items():
                u = _Unit(f"{fqn}.{part}" if fqn else part, "MultiheadAttention", w, tuple(w.shape), b, m)
                _decide_static(u, allowed, max_density, reason)
                units.append(u)
                owners.setdefault(fqn, []).append(u)
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            w = m.weight
            reason = (_own_behaviour(m, nn.Linear if isinstance(m, nn.Linear) else nn.Conv2d)
                      or ("weight shared with another module (tied): kept dense" if counts.get(id(w), 1) > 1 else "")
                      or ("excluded" if excluded_name(fqn) else ""))
            w2 = w.detach().reshape(w.shape[0], -1)
            u = _Unit(fqn, type(m).__name__, w2, tuple(w.shape), m.bias, m)
            _decide_static(u, allowed, max_density, reason)
            units.append(u)
            owners.setdefault(fqn, []).append(u)
            continue
        for pname, p in m.named_parameters(recurse=False):
            if p.dim() < 2 or p.numel() == 0:
                continue
            nnz = int((p.detach() != 0).sum())
            d = nnz / p.numel()
            if d < 1.0:
                why = ("grouped convolution" if isinstance(m, nn.Conv2d) else type(m).__name__)
                other.append(LayerChoice(name=f"{fqn}.{pname}" if fqn else pname, kind=type(m).__name__,
                                         shape=tuple(p.shape), density=d, kernel="dense",
                                         dense_bytes=_nbytes(p), bytes=_nbytes(p), nnz=nnz,
                                         reason=f"no sparse kernel for {why}: kept dense", convertible=False))
    return units, other, owners


def _mha_parts(m: nn.MultiheadAttention) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    e = m.embed_dim
    b = m.in_proj_bias.detach() if m.in_proj_bias is not None else None
    bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight.detach()
        ws = (w[:e], w[e:2 * e], w[2 * e:])
    else:
        ws = (m.q_proj_weight.detach(), m.k_proj_weight.detach(), m.v_proj_weight.detach())
    ob = m.out_proj.bias.detach() if m.out_proj.bias is not None else None
    return {"q_proj": (ws[0], bq), "k_proj": (ws[1], bk), "v_proj": (ws[2], bv),
            "out_proj": (m.out_proj.weight.detach(), ob)}


def _decide_static(u: _Unit, allowed: Sequence[str], max_density: float, reason: str) -> None:
    """Record the density; decide now (dense) when no measurement can change the outcome.

    ``reason`` (excluded, tied, custom forward, hooks, ...) forces the layer dense, even under ``choices``.
    """
    u.forced = bool(reason)
    w = u.weight
    nnz = int((w != 0).sum())
    d = nnz / max(1, w.numel())
    dense_bytes = _nbytes(w) + _nbytes(u.bias)
    u.choice = LayerChoice(name=u.name, kind=u.kind, shape=u.orig_shape, density=d, kernel="dense",
                           dense_bytes=dense_bytes, bytes=dense_bytes, nnz=nnz, reason=reason)
    if not reason and d > max_density and "dense" in allowed:
        u.choice.reason = f"density {d:.3g} > max_density {max_density}: kept dense"
    if u.choice.reason:
        return
    u.candidates = _kernels_for(w, allowed)
    if not u.candidates:
        u.choice.reason = "no sparse kernel allowed"
        return
    u.pending, u.choice = u.choice, None


def _apply_choices(units: list[_Unit], choices: Mapping[str, str]) -> None:
    by_name = {u.name: u for u in units}
    unknown = sorted(set(choices) - set(by_name))
    if unknown:
        raise SparsekitError(f"sparse_inference: choices names no convertible layer: {unknown[:5]}; layer names "
                             f"are those of inference_report(model).choices()")
    for name, kname in choices.items():
        u = by_name[name]
        base = str(kname).split(" ")[0]
        if base not in KERNELS:
            raise SparsekitError(f"sparse_inference: choices[{name!r}] = {kname!r}: expected one of {KERNELS}")
        row = u.choice if u.choice is not None else u.pending
        assert row is not None
        if base == "dense":
            row.kernel, row.reason = "dense", "; ".join(r for r in ["from choices", row.reason] if r)
            u.choice, u.pending, u.measured, u.candidates = row, None, True, {}
            continue
        if u.choice is not None:  # decided dense statically
            if u.forced:
                raise SparsekitError(f"sparse_inference: choices[{name!r}] = {kname!r}, but the layer must stay "
                                     f"dense: {u.choice.reason}")
            u.pending, u.choice = u.choice, None
            u.pending.reason = ""
        if base not in u.candidates:
            u.candidates.update(_kernels_for(u.weight, (base,)))
        if base not in u.candidates:
            raise SparsekitError(f"sparse_inference: choices[{name!r}] = {kname!r} does not fit this weight's "
                                 f"pattern (bsr needs full square blocks, condensed equal row counts)")
        _choose(u, row, base)
        row.reason = "from choices (not measured)"
        u.choice, u.measured = row, True


def _sparse_module(u: _Unit, kernel: _Kernel) -> nn.Module:
    m = u.module
    if isinstance(m, nn.Conv2d):
        out = SparseConv2d(kernel, m.bias, m)
    else:
        out = SparseLinear(kernel, u.bias)
    return out.eval()


def _time_unit(u: _Unit, x: torch.Tensor, dense_fn: Callable[[], object], allowed: Sequence[str],
               margin: float, repeats: int) -> None:
    pending = u.pending
    assert pending is not None
    mods = {name: _sparse_module(u, k) for name, k in u.candidates.items()}
    fns: dict[str, Callable[[], object]] = {"dense": dense_fn}
    for name, mod in mods.items():
        fns[name] = (lambda mod=mod: mod(x))
    with torch.no_grad():
        times, errors, medians = _measure(fns, x.device, repeats, budget_s=2.0)
    pending.input_shape = tuple(x.shape)
    pending.times_ms = {k: round(v, 5) for k, v in times.items()}
    pending.dense_ms = times.get("dense")
    sparse = {k: v for k, v in times.items() if k != "dense"}
    notes = [f"{k} failed ({e})" for k, e in errors.items() if k != "dense"]
    if sparse:
        best = min(sparse, key=sparse.__getitem__)
        pending.sparse_ms = sparse[best]
        dense_t = pending.dense_ms
        # sparse must win by the margin in its fastest round *and* in its median round: on a busy machine
        # one lucky round is not enough, and a wrong "sparse" costs speed where a wrong "dense" costs none
        wins = dense_t is None or (sparse[best] * (1 + margin) < dense_t
                                   and medians[best] * (1 + margin) < medians.get("dense", math.inf))
        if "dense" not in allowed or wins:
            _choose(u, pending, best)
        else:
            notes.insert(0, f"dense faster or not {margin:.0%} slower ({best} {sparse[best]:.3g} ms, median "
                            f"{medians[best]:.3g}; dense {dense_t:.3g} ms, median {medians.get('dense', 0):.3g})")
    else:
        notes.insert(0, "no sparse kernel ran: kept dense")
    pending.reason = "; ".join(n for n in [pending.reason, *notes] if n)
    u.choice = pending
    u.measured = True


def _choose(u: _Unit, pending: LayerChoice, name: str) -> None:
    k = u.candidates[name]
    pending.kernel = _label(name, k)
    pending.bytes = k.nbytes() + _nbytes(u.bias)
    u.candidates = {name: k}


def _measure_on_sample(net: nn.Module, todo: list[_Unit], sample_input: Any, allowed: Sequence[str],
                       margin: float, repeats: int) -> tuple[Any, list[tuple[int, ...]]]:
    by_module: dict[int, list[_Unit]] = {}
    for u in todo:
        by_module.setdefault(id(u.module), []).append(u)
    handles = []
    seen: set[int] = set()

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if id(mod) in seen:
            return
        seen.add(id(mod))
        us = by_module[id(mod)]
        if isinstance(mod, nn.MultiheadAttention):
            q = args[0] if len(args) > 0 else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            v = args[2] if len(args) > 2 else kwargs["value"]
            inputs = {"q_proj": q, "k_proj": k, "v_proj": v, "out_proj": q}
            for u in us:
                part = u.name.rsplit(".", 1)[-1]
                x = inputs[part]
                if part == "out_proj" and x.shape[-1] != u.weight.shape[1]:
                    x = torch.randn(*x.shape[:-1], u.weight.shape[1], dtype=x.dtype, device=x.device)
                _time_unit(u, x, lambda u=u, x=x: F.linear(x, u.weight, u.bias), allowed, margin, repeats)
        else:
            x = args[0] if args else next(iter(kwargs.values()))
            u = us[0]
            _time_unit(u, x, lambda: mod.forward(x), allowed, margin, repeats)  # forward: not through the hooks

    for us in by_module.values():
        handles.append(us[0].module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        ref = _reference(net, sample_input)
    finally:
        for h in handles:
            h.remove()
    shapes = [tuple(t.shape) for t in _tensors(sample_input)]
    for u in todo:
        if not u.measured and isinstance(u.module, nn.Conv2d):
            _keep_dense(u, "not called by sample_input: kept dense")
    return ref, shapes


def _reference(net: nn.Module, sample_input: Any) -> Any:
    """The dense model's output on the sample, through torch's regular attention path as the converted
    model takes it (the fused nested-tensor path writes 0 at padded positions instead)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            return _call(net, sample_input)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _measure_synthetic(u: _Unit, batch_size: int, allowed: Sequence[str], margin: float, repeats: int) -> None:
    if isinstance(u.module, nn.Conv2d):
        if "dense" in allowed:
            _keep_dense(u, "convolution needs sample_input to be measured: kept dense")
            return
        pending = u.pending
        assert pending is not None
        _choose(u, pending, min(u.candidates, key=lambda k: u.candidates[k].nbytes()))
        pending.reason = "not measured (no sample_input); smallest kernel"
        u.choice, u.measured = pending, True
        return
    w = u.weight
    x = torch.randn(batch_size, w.shape[1], dtype=w.dtype, device=w.device)
    mod = u.module

    def dense_fn() -> object:
        return F.linear(x, u.weight, u.bias) if isinstance(mod, nn.MultiheadAttention) else mod(x)

    _time_unit(u, x, dense_fn, allowed, margin, repeats)
    if u.choice is not None:
        u.choice.reason = "; ".join(r for r in ["synthetic input", u.choice.reason] if r)


def _keep_dense(u: _Unit, reason: str) -> None:
    pending = u.pending
    assert pending is not None
    pending.reason = reason
    u.choice, u.measured, u.candidates = pending, True, {}


def _replace(net: nn.Module, units: list[_Unit], owners: dict[str, list[_Unit]]) -> tuple[nn.Module, list[str]]:
    """Put the sparse modules in place; returns the model (new if it was itself one layer) and the names."""
    replaced = []
    for fqn, us in owners.items():
        if all(u.choice is None or u.choice.kernel == "dense" for u in us):
            continue
        m = us[0].module
        if isinstance(m, nn.MultiheadAttention):
            parts = {}
            for u in us:
                part = u.name.rsplit(".", 1)[-1]
                if u.choice is not None and u.choice.kernel != "dense":
                    parts[part] = SparseLinear(next(iter(u.candidates.values())), u.bias).eval()
                else:
                    lin = nn.Linear(u.weight.shape[1], u.weight.shape[0], bias=u.bias is not None,
                                    device="meta")
                    lin.weight = nn.Parameter(u.weight.clone(), requires_grad=False)
                    if u.bias is not None:
                        lin.bias = nn.Parameter(u.bias.clone(), requires_grad=False)
                    parts[part] = lin.eval()
            new = SparseMultiheadAttention(m, parts["q_proj"], parts["k_proj"], parts["v_proj"], parts["out_proj"])
        else:
            new = _sparse_module(us[0], next(iter(us[0].candidates.values())))
        new.eval()
        if fqn:
            parent_name, _, child = fqn.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, new)
        else:  # the model is a single layer
            net = new
        replaced.append(fqn)
    for u in units:  # the candidates not chosen are dropped (memory)
        if u.choice is not None and u.choice.kernel == "dense":
            u.candidates = {}
    return net, replaced


def _slow_path(module: nn.Module, args: tuple) -> None:
    """A no-op pre-hook: its presence makes torch's TransformerEncoderLayer skip the fused fast path
    (which reads ``.weight`` of each sub-layer directly)."""
    return None


def _disable_fast_paths(net: nn.Module, replaced: list[str]) -> None:
    if not replaced:
        return
    for fqn, m in net.named_modules():
        inside = any(r == fqn or r.startswith(fqn + ".") or not fqn for r in replaced)
        if not inside:
            continue
        if isinstance(m, nn.TransformerEncoderLayer):
            m.register_forward_pre_hook(_slow_path)
        elif isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False


def _call(net: nn.Module, sample: Any) -> Any:
    if isinstance(sample, torch.Tensor):
        return net(sample)
    if isinstance(sample, Mapping):
        return net(**sample)
    if isinstance(sample, (tuple, list)):
        return net(*sample)
    raise SparsekitError(f"sparse_inference: sample_input must be a tensor, a tuple of arguments or a dict of "
                         f"keyword arguments, got {type(sample).__name__}")


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _compare(ref: Any, got: Any, rtol: float, atol: float) -> float:
    a, b = _tensors(ref), _tensors(got)
    if not a:
        raise SparsekitError(f"sparse_inference: the model's output ({type(ref).__name__}) holds no tensors in "
                             "tensors, tuples, lists or dicts, so it cannot be checked against the dense model; "
                             "return those, or pass verify=False")
    if len(a) != len(b):
        raise SparsekitError(f"sparse_inference: the converted model returned {len(b)} tensors, the dense model "
                             f"{len(a)}; please report this with the model")
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            raise SparsekitError(f"sparse_inference: output {i} has shape {tuple(y.shape)}, dense "
                                 f"{tuple(x.shape)}; please report this with the model")
        if not x.is_floating_point():
            if not torch.equal(x, y):
                raise SparsekitError(f"sparse_inference: output {i} differs from the dense model")
            continue
        eps = torch.finfo(x.dtype).eps  # low-precision dtypes: tolerances grow with the rounding unit
        rtol_d, atol_d = max(rtol, 64 * eps), max(atol, 64 * eps)
        x64, y64 = x.double(), y.double()
        err = (x64 - y64).abs()
        scale = float(x64.abs().max()) if x64.numel() else 0.0
        tol = atol_d * max(1.0, scale) + rtol_d * x64.abs()
        both_nan = torch.isnan(x64) & torch.isnan(y64)
        bad = (err > tol) & ~both_nan
        worst = max(worst, float(err[~both_nan].max()) if (~both_nan).any() else 0.0)
        if bool(bad.any()):
            raise SparsekitError(
                f"sparse_inference: output {i} differs from the dense model by up to {float(err[bad].max()):.3g} "
                f"(tolerance atol={atol_d:.3g} x {max(1.0, scale):.3g} + rtol={rtol_d:.3g}); pass larger rtol=/atol= "
                f"if that is rounding, else kernels=('dense',) and report the model")
    return worst
