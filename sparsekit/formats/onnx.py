"""ONNX export of sparse models: masks baked in, sparse storage, onnxruntime parity.

:func:`export_onnx` writes a model with its sparsekit masks baked in (pruned weights are exactly zero)
as a standard ONNX file, in one of three storages:

``dense``
    Every weight as a plain initializer, zeros in place. The file is as large as the dense model.
``sparse-initializer``
    Weights with zeros as ONNX ``SparseTensorProto`` (values plus sorted int64 linear indices):
    about 12 bytes per kept fp32 weight, so it is smaller than dense only below about 1/3 density.
``compact``
    Kept values plus a compact code of their positions, rebuilt into the dense weight by a small
    subgraph that reads initializers only; onnxruntime folds it into a constant when it creates the
    session (its default graph optimisations). About 5 to 6 bytes per kept fp32 weight at densities
    from 0.5 to 0.001. The file stays standard ONNX (opset >= 11, no custom operators).
``auto``
    All three are built; the smallest that passes the checker and (with ``verify=True``) the
    onnxruntime parity check is written.

In the sparse storages each float initializer is encoded only where that makes it smaller (so biases,
normalisation parameters and layers kept dense stay dense). Values equal to zero (``+0.0`` and
``-0.0``) are not stored and read back as ``+0.0``; every other value is stored bit for bit.

**Speed.** onnxruntime densifies sparse initializers when it loads a file, and the compact subgraph
becomes a dense constant; unstructured zeros give no inference speed-up (measured by
``benchmarks/bench_onnx.py``: same latency as dense). The sparse storages make files smaller, not
inference faster.

Compact encoding (``sparsekit-compact-v1``)
-------------------------------------------
A float initializer ``W`` (float16, float32 or float64) of shape ``S`` with ``N`` elements and the
nonzero entries at sorted flat (row-major) positions ``p_0 < p_1 < ... < p_{n-1}`` is replaced by
two initializers and nodes whose output is named ``W``:

* ``bitmask``: ``positions`` is ``uint8[ceil(N / 8)]``, the mask bits packed big-endian within each
  byte (``numpy.packbits``); ``values`` is ``[0, W[p_0], ..., W[p_{n-1}]]`` (a leading zero). Decoding:
  unpack the bits (``BitShift`` by 7..0, ``Mod 2``), keep the first ``N``, ``k = CumSum(bits) * bits``,
  ``W = Reshape(Gather(values, k), S)``. It costs ``N / 8`` bytes of positions (best above density 1/8).
* ``gap8`` / ``gap16``: ``positions`` is ``uint8`` / ``uint16`` codes ``c_i = g_i - 1`` of the gaps
  ``g_i = q_i - q_{i-1}`` (``q_{-1} = -1``) between consecutive *stored* positions ``q``; ``values``
  holds the value stored at each ``q_i``. A gap larger than ``2**b`` (``b`` = 8 or 16) is bridged by
  filler entries of gap ``2**b`` and value 0 (they land on pruned positions, which are zero anyway).
  Decoding: ``q = CumSum(c + 1) - 1``, ``W = Reshape(ScatterND(zeros(N), q[:, None], values), S)``.
  One or two bytes of positions per kept weight (plus the fillers).
* ``zeros``: no kept weight: ``W = Reshape(ConstantOfShape(N), S)``.

The encoder picks the smallest of these per tensor (or keeps it dense if that is smaller). The
model's metadata entry ``sparsekit.storage`` (JSON) lists every encoded tensor with its encoding and
the names of its ``values``/``positions`` initializers; :func:`load_onnx_weights` decodes them in
numpy, without onnxruntime.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_bytes
from ..errors import SparsekitError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnxruntime

__all__ = [
    "STORAGES", "PROVIDERS", "ExportReport", "LayerExport", "Parity", "TensorStorage", "OnnxCheck",
    "export_onnx", "encode_storage", "load_onnx_weights", "check_onnx", "ort_session", "random_inputs",
]

STORAGES = ("auto", "dense", "sparse-initializer", "compact")
"""Values of ``storage``; ``auto`` picks the smallest file that passes verification."""
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
"""Short provider names and the onnxruntime execution providers they select."""
EXPORTERS = ("auto", "dynamo", "torchscript")
METADATA_KEY = "sparsekit.storage"
COMPACT_FORMAT = "sparsekit-compact-v1"
COMPACT_MIN_OPSET = 11
_MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit on one serialised message
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FLOAT_TYPES = ("float16", "float32", "float64")
_INSTALL_ONNX = "pip install 'sparsekit[onnx]'"


# --- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorStorage:
    """How one initializer is stored in a file.

    Attributes:
        name: the initializer's name in the graph (the parameter's fqn for exported weights).
        encoding: ``"dense"``, ``"sparse"`` (SparseTensorProto), ``"bitmask"``, ``"gap8"``, ``"gap16"``
            or ``"zeros"``.
        shape: the tensor's shape.
        dtype: numpy dtype name.
        nonzeros: entries that are not zero.
        payload_bytes: bytes of the stored data (values plus positions or indices; raw data only).
    """

    name: str
    encoding: str
    shape: tuple[int, ...]
    dtype: str
    nonzeros: int
    payload_bytes: int


@dataclass(frozen=True)
class LayerExport:
    """One masked weight in the exported file.

    Attributes:
        fqn: the parameter's name in the model.
        initializer: its initializer in the ONNX graph (None if the exporter folded it into another
            constant, so that it cannot be found by name or by its zero pattern).
        shape: the weight's shape.
        kept: weights the mask keeps.
        encoding: how the written file stores it (see :class:`TensorStorage`).
        payload_bytes: bytes the written file spends on it.
    """

    fqn: str
    initializer: str | None
    shape: tuple[int, ...]
    kept: int
    encoding: str
    payload_bytes: int


@dataclass(frozen=True)
class Parity:
    """onnxruntime output versus PyTorch output on one set of inputs.

    ``max_rel_diff`` is ``max_abs_diff`` divided by the largest absolute PyTorch output value; the check
    passes when ``max_abs_diff <= atol + rtol * max|PyTorch output|`` for every output.
    """

    inputs: str
    shapes: list[list[int]]
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    problem: str | None = None


@dataclass
class ExportReport:
    """What :func:`export_onnx` did.

    Attributes:
        path: the file written.
        storage: the storage written (``auto`` resolved).
        requested_storage: the ``storage`` argument.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, via ``torch.export``) or
            ``"torchscript"`` (``dynamo=False``).
        exporter_note: why the TorchScript exporter was used (the dynamo one failed to export, or its
            output failed the checks), and how a transformers causal LM was exported; None otherwise.
        opset: the ONNX opset of the file.
        dynamic_batch: whether the first axis of every input is symbolic (``batch``).
        file_bytes: size of the written file.
        sizes: serialised size of every storage that was built, by storage name.
        weight_bytes: bytes each storage spends on the masked weights (payload only).
        params: elements of the masked weights.
        kept: weights the masks keep.
        layers: one :class:`LayerExport` per masked weight.
        parity: the onnxruntime checks of the written file (empty with ``verify=False``).
        rejected: storages ``auto`` did not write because they failed a check, with the reason.
        provider: the onnxruntime execution provider used for verification.
        rtol, atol: the parity tolerances.
        checker: ``"full"`` if ``onnx.checker`` with shape inference passed, ``"basic"`` if only the
            structural check could run (shape inference failed on an operator it does not know).
    """

    path: Path
    storage: str
    requested_storage: str
    exporter: str
    exporter_note: str | None
    opset: int
    dynamic_batch: bool
    file_bytes: int
    sizes: dict[str, int]
    weight_bytes: dict[str, int]
    params: int
    kept: int
    layers: list[LayerExport]
    parity: list[Parity] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    rtol: float = 1e-3
    atol: float = 1e-5
    checker: str = "full"

    @property
    def density(self) -> float:
        """Kept fraction of the masked weights (1.0 when nothing is masked)."""
        return self.kept / self.params if self.params else 1.0

    @property
    def bytes_per_kept_weight(self) -> dict[str, float]:
        """Bytes each storage spends per kept weight of the masked layers (payload only)."""
        return {k: v / self.kept for k, v in self.weight_bytes.items()} if self.kept else {}

    @property
    def max_abs_diff(self) -> float | None:
        """Largest absolute difference onnxruntime versus PyTorch over all checked inputs."""
        return max((p.max_abs_diff for p in self.parity), default=None)

    @property
    def max_rel_diff(self) -> float | None:
        """Largest relative difference (see :class:`Parity`) over all checked inputs."""
        return max((p.max_rel_diff for p in self.parity), default=None)

    @property
    def verified(self) -> bool:
        """Whether onnxruntime ran the file and matched PyTorch on every checked input."""
        return bool(self.parity) and all(p.passed for p in self.parity)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of everything above (paths as strings)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d.update(density=self.density, bytes_per_kept_weight=self.bytes_per_kept_weight,
                 max_abs_diff=self.max_abs_diff, max_rel_diff=self.max_rel_diff, verified=self.verified)
        return d

    def summary(self) -> str:
        """A few lines for people: file, storage, sizes, parity."""
        dense = self.sizes.get("dense")
        how = "smallest that passed verification" if self.parity else "smallest; not verified"
        chosen = f"{self.storage} (auto: {how})" if self.requested_storage == "auto" else self.storage
        lines = [f"wrote {self.path}: {_size(self.file_bytes)}, storage {chosen}"]
        exporter = "torch.onnx dynamo (torch.export)" if self.exporter == "dynamo" else "torch.onnx TorchScript"
        lines.append(f"exporter: {exporter}, opset {self.opset}, "
                     f"{'dynamic batch' if self.dynamic_batch else 'fixed input shapes'}, checker {self.checker}"
                     + (f"; {self.exporter_note}" if self.exporter_note else ""))
        parts = []
        for name, n in self.sizes.items():
            share = f" ({100 * n / dense:.3g}% of dense)" if dense and name != "dense" else ""
            per = self.bytes_per_kept_weight.get(name)
            parts.append(f"{name} {n:,} bytes{share}" + (f", {per:.2f} B/kept weight" if per is not None else ""))
        lines.append("sizes: " + "; ".join(parts))
        found = sum(1 for r in self.layers if r.initializer is not None)
        lines.append(f"masked weights: {len(self.layers)} ({found} found in the graph), {self.kept:,} of "
                     f"{self.params:,} kept (density {self.density:.4g})")
        for name, why in self.rejected.items():
            lines.append(f"not used: {name}: {why}")
        if self.parity:
            worst = max(self.parity, key=lambda p: p.max_rel_diff)
            inputs = ", ".join(p.inputs for p in self.parity)
            lines.append(f"parity, onnxruntime {self.provider} vs PyTorch on {inputs}: "
                         f"max abs diff {self.max_abs_diff:.3g}, "
                         f"max rel diff {worst.max_rel_diff:.3g} (tolerance rtol {self.rtol:g}, atol {self.atol:g})")
        else:
            lines.append("parity: not checked (verify=False)")
        if self.storage != "dense":
            lines.append("note: onnxruntime turns sparse and compact weights into dense ones when it loads the file: "
                         "the file is smaller, inference is not faster")
        return "\n".join(lines)


@dataclass
class OnnxCheck:
    """What :func:`check_onnx` measured.

    Attributes:
        path: the file.
        file_bytes: its size.
        checker: ``"full"``, ``"basic"`` (see :class:`ExportReport`).
        opset: the ONNX opset.
        storage: ``sparsekit.storage`` metadata summary (``{"storage": ..., "encodings": {enc: count}}``)
            or None for files sparsekit did not write.
        provider: the execution provider that ran it.
        session_s: seconds to create the onnxruntime session (load, decode, optimise).
        inputs: ``[(name, shape used, dtype)]``.
        outputs: ``[(name, shape)]`` of the first run.
        latency_ms: every timed run, in milliseconds.
    """

    path: Path
    file_bytes: int
    checker: str
    opset: int
    storage: dict[str, Any] | None
    provider: str
    session_s: float
    inputs: list[tuple[str, list[int], str]]
    outputs: list[tuple[str, list[int]]]
    latency_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latency_ms) if self.latency_ms else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["median_ms"] = self.median_ms
        return d


# --- optional dependencies -----------------------------------------------------------------------------


def _import_onnx() -> Any:
    try:
        import onnx
        from onnx import numpy_helper  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the onnx package: {_INSTALL_ONNX}") from e
    return onnx


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"running ONNX files needs onnxruntime: {_INSTALL_ONNX} (or verify=False, which skips "
                          "the onnxruntime check)") from e
    return onnxruntime


def _provider_name(provider: str) -> str:
    if not isinstance(provider, str):
        raise TypeError(f"provider must be 'cpu' or 'cuda', got {type(provider).__name__}")
    name = PROVIDERS.get(provider.lower(), provider)
    if name not in PROVIDERS.values():
        raise ValueError(f"provider must be one of {', '.join(map(repr, PROVIDERS))} (or the onnxruntime names "
                         f"{', '.join(PROVIDERS.values())}), got {provider!r}")
    return name


def _available_provider(provider: str) -> str:
    """The onnxruntime provider name for ``provider``; raises if this onnxruntime does not have it."""
    ort = _import_ort()
    name = _provider_name(provider)
    available = ort.get_available_providers()
    if name not in available:
        raise SparsekitError(f"onnxruntime has no {name} here (available: {', '.join(available)}); for "
                             f"provider='cuda' install onnxruntime-gpu (pip install 'sparsekit[gpu]', after "
                             "uninstalling onnxruntime) and use a machine with a CUDA GPU, or use provider='cpu'")
    return name


def ort_session(model: bytes | str | os.PathLike, provider: str = "cpu", *, threads: int | None = None
                ) -> onnxruntime.InferenceSession:
    """An onnxruntime session for a model (bytes or path) on ``provider`` (``"cpu"`` or ``"cuda"``).

    Raises:
        ImportError: onnxruntime is not installed.
        SparsekitError: ``provider="cuda"`` but this onnxruntime has no CUDA provider, or the file cannot
            be loaded.
    """
    ort = _import_ort()
    name = _available_provider(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise SparsekitError(f"onnxruntime cannot load the model: {_first_line(e)}") from e


# --- inputs --------------------------------------------------------------------------------------------


def _as_shapes(input_shape: Any) -> list[tuple[int, ...]]:
    """``(1, 3, 32, 32)`` or ``[(1, 3, 32, 32), (1, 10)]`` as a list of shapes."""
    if isinstance(input_shape, (int, np.integer)) or isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape) if isinstance(input_shape, torch.Size) else (input_shape,)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, (str, bytes)) or not input_shape:
        raise TypeError(f"input_shape must be a shape like (1, 3, 32, 32) or a list of shapes, got {input_shape!r}")
    shapes = [input_shape] if all(isinstance(d, (int, np.integer)) for d in input_shape) else list(input_shape)
    out = []
    for s in shapes:
        if (not isinstance(s, (Sequence, torch.Size)) or isinstance(s, (str, bytes))
                or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in s)):
            raise TypeError(f"input_shape must be a shape like (1, 3, 32, 32) or a list of shapes, got {input_shape!r}")
        if any(d < 1 for d in s):
            raise ValueError(f"input_shape {tuple(s)} has a size below 1; every size must be a positive integer")
        out.append(tuple(int(d) for d in s))
    return out


def _example_inputs(model: nn.Module, example_input: Any, input_shape: Any) -> tuple[torch.Tensor, ...]:
    if example_input is not None and input_shape is not None:
        raise ValueError("give example_input or input_shape, not both")
    if example_input is None and input_shape is None:
        raise ValueError("export_onnx needs example_input=tensor(s) or input_shape=(batch, ...), e.g. "
                         "input_shape=(1, 3, 32, 32) (CLI: --input-shape 1,3,32,32)")
    if example_input is not None:
        inputs = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
        if not isinstance(inputs, (tuple, list)) or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise TypeError("example_input must be a tensor or a tuple of tensors (the model's positional "
                            f"arguments), got {type(example_input).__name__}")
        return tuple(t.detach().cpu() for t in inputs)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=gen).to(dtype) for s in _as_shapes(input_shape))


def random_inputs(like: Sequence[torch.Tensor], *, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random tensors shaped like ``like`` (first axis ``batch`` if given): normal floats, integers in
    the range of the sample, random bools. Uses its own generator (torch's global RNG is not touched)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in like:
        shape = (batch, *t.shape[1:]) if batch is not None and t.dim() else tuple(t.shape)
        if t.dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        elif t.is_floating_point():
            out.append(torch.randn(shape, generator=gen).to(t.dtype))
        elif t.is_complex():
            raise SparsekitError("complex inputs are not supported by ONNX export")
        else:
            lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 1)
            out.append(torch.randint(lo, hi + 1, shape, generator=gen).to(t.dtype))
    return tuple(out)


# --- the model to export -------------------------------------------------------------------------------


def _export_and_verify(net: nn.Module, sample: tuple[torch.Tensor, ...], outputs: list[torch.Tensor],
                       masks: dict[str, torch.Tensor], aliases: dict[str, str], ticket_used: Any,
                       sets: list[tuple[str, tuple[torch.Tensor, ...]]], refs: list[list[torch.Tensor]], *,
                       exporter: str, opset: int | None, dynamic_batch: bool, storage: str, verify: bool,
                       provider_name: str, rtol: float, atol: float) -> dict[str, Any]:
    """Export with ``exporter`` and build/check/verify every storage; ``chosen`` is None when all failed."""
    proto, used, note = _export(net, _trace_inputs(net, sample, dynamic_batch), len(outputs), opset=opset,
                                dynamic_batch=dynamic_batch, exporter=exporter)
    note = f"dynamo exporter failed: {note}" if note else None
    _strip_debug_info(proto.graph)
    _add_provenance(proto, used, masks, ticket_used)
    located = _locate(proto, masks, aliases)

    modes = ["dense", "sparse-initializer", "compact"] if storage == "auto" else [storage]
    built: dict[str, tuple[onnx.ModelProto, dict[str, TensorStorage]]] = {}
    rejected: dict[str, str] = {}
    for mode in dict.fromkeys(["dense", *modes]):  # dense too: the reference size
        try:
            built[mode] = encode_storage(proto, mode)
        except SparsekitError as e:
            if storage != "auto":
                raise
            rejected[mode] = str(e)
    sizes = {mode: m.ByteSize() for mode, (m, _) in built.items()}
    weight_bytes = {mode: sum(info[n].payload_bytes for n in located.values() if n and n in info)
                    for mode, (_, info) in built.items()}
    chosen = None
    batch_only: list[bool] = []  # per storage that failed parity: did only the other batch size fail?
    for mode in sorted((m for m in built if m in modes), key=lambda m: (sizes[m], modes.index(m))):
        m, _ = built[mode]
        if sizes[mode] > _MAX_PROTO_BYTES:
            rejected[mode] = (f"{_size(sizes[mode])} is over protobuf's 2 GiB limit for one ONNX file; "
                              "sparsekit writes single-file ONNX only")
            continue
        try:
            checker = _check(m)
        except Exception as e:  # onnx.checker.ValidationError and friends
            rejected[mode] = f"onnx.checker: {_first_line(e)}"
            continue
        parity: list[Parity] = []
        if verify:
            data = m.SerializeToString()
            try:
                session = ort_session(data, provider_name)
            except SparsekitError as e:
                rejected[mode] = str(e)
                continue
            parity = _parity(session, sets, refs, rtol, atol)
            del session
            bad = [p for p in parity if not p.passed]
            if bad:
                batch_only.append(dynamic_batch and all(p is parity[-1] for p in bad))
                rejected[mode] = "; ".join(f"{p.inputs}: {p.problem}" for p in bad)
                continue
        chosen = (mode, m, checker, parity)
        break
    by_problem: dict[str, list[str]] = {}
    for k, v in rejected.items():
        by_problem.setdefault(v, []).append(k)
    why = "; ".join(f"{'/'.join(ks)} storage: {v}" for v, ks in by_problem.items())
    return {"chosen": chosen, "built": built, "rejected": rejected, "sizes": sizes, "weight_bytes": weight_bytes,
            "located": located, "used": used, "note": note, "batch_only": batch_only, "why": why}


def _is_causal_lm(net: nn.Module) -> bool:
    """A transformers causal language model (duck typed: a ``config`` with ``vocab_size`` and
    ``use_cache``, and a ``*ForCausalLM``/``*LMHeadModel`` class)."""
    cfg = getattr(net, "config", None)
    name = type(net).__name__
    return (cfg is not None and hasattr(cfg, "vocab_size") and hasattr(cfg, "use_cache")
            and (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")))


def _logits_only(net: nn.Module) -> str | None:
    """Make a transformers causal LM (the export copy) map ``input_ids`` to ``logits`` with the KV cache
    off, so it exports without a user wrapper; returns a note for the report, or None for other models.

    The exported graph has one input ``input_ids`` (int64, ``(batch, sequence)``; the sequence length is
    that of the sample) and one output, the logits ``(batch, sequence, vocab)``. Parameter names are
    unchanged (the forward is replaced on the copy, the model is not wrapped)."""
    if not _is_causal_lm(net):
        return None
    import types

    lm_forward = net.forward

    def forward(self: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return lm_forward(input_ids=input_ids, use_cache=False, return_dict=True).logits

    net.forward = types.MethodType(forward, net)
    return f"{type(net).__name__} exported as input_ids -> logits with use_cache=False"


def _token_ids(net: nn.Module, input_shape: Any) -> tuple[torch.Tensor, ...]:
    """Random token ids below the vocabulary size as the sample of a causal LM."""
    if input_shape is None:
        raise ValueError("export_onnx needs example_input=token ids or input_shape=(batch, sequence), e.g. "
                         "input_shape=(1, 16), for a causal language model")
    shapes = _as_shapes(input_shape)
    if len(shapes) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"a causal language model takes one input of shape (batch, sequence), got {input_shape!r}")
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, int(net.config.vocab_size), shapes[0], generator=gen),)


@torch.no_grad()
def _baked_copy(model: nn.Module, ticket: Any) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, str], Any]:
    """A CPU, eval-mode copy of ``model`` with the masks baked in (``+0.0`` at pruned positions).

    Returns ``(copy, {fqn: bool mask}, {alias fqn: fqn}, ticket used or None)``. The user's model is
    only read.
    """
    from ..attach import finalize, is_pruned, masked_parameters, ticket_of
    from ..ticket import Ticket
    from .ticket_file import apply_ticket, load_ticket

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise SparsekitError("the model has parameters on the meta device (no values); materialise it before "
                             "exporting")
    if ticket is not None and not isinstance(ticket, (Ticket, str, os.PathLike)):
        raise TypeError(f"ticket must be a sparsekit.Ticket or a ticket file path, got {type(ticket).__name__}")
    own = {fqn: mask for fqn, _, mask in masked_parameters(model)}
    if ticket is not None and own and ticket is not ticket_of(model):
        raise SparsekitError("the model already carries sparsekit masks and a different ticket was given; pass "
                             "ticket=None to export with the model's masks, or pass the unpruned model with ticket=")
    try:
        net = copy.deepcopy(model)
    except Exception as e:  # deepcopy can fail in many ways (unpicklable attributes, ...)
        raise SparsekitError(f"cannot copy the model to export it without changing it: {_first_line(e)}") from e
    net = net.cpu().eval()
    used = ticket_of(model) if own else None
    if ticket is not None and not own:
        if not isinstance(ticket, Ticket):
            ticket = load_ticket(ticket)
        apply_ticket(net, ticket)  # checks fit; loads stored weights into the copy
        own = {fqn: mask.cpu() for fqn, _, mask in masked_parameters(net)}
        finalize(net)
        used = ticket
    if is_pruned(net):  # defensive: a copy should never carry masks
        finalize(net)
    params = dict(net.named_parameters(remove_duplicate=False))
    masks: dict[str, torch.Tensor] = {}
    for fqn, mask in own.items():
        p = params[fqn]
        mask = mask.to(torch.bool).cpu()
        p.masked_fill_(~mask, 0.0)  # +0.0 (a product with the mask would leave -0.0 for negative weights)
        masks[fqn] = mask
    aliases = _aliases(net)
    return net, masks, aliases, used


def _aliases(net: nn.Module) -> dict[str, str]:
    """``{every name of a parameter: its first name}`` (tied weights have several)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in net.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def _flatten(outputs: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(outputs)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def _first_line(error: BaseException) -> str:
    text = _ANSI.sub("", str(error)).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def _brief(error: BaseException, limit: int = 300) -> str:
    """The whole message of ``error`` on one line, cut at ``limit`` characters."""
    text = " ".join(_ANSI.sub("", str(error)).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _root_reason(error: BaseException) -> str:
    """The first line of the innermost cause of ``error`` (torch.onnx wraps the real reason)."""
    seen = {id(error)}
    inner = error
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        inner = inner.__cause__
        seen.add(id(inner))
    head, root = _first_line(error), _first_line(inner)
    return head if inner is error else f"{root} ({type(inner).__name__})"


@torch.no_grad()
def _reference(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    try:
        out = net(*inputs)
    except Exception as e:  # the model's own error for a wrong shape or dtype
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise SparsekitError(f"the model does not run on inputs of shape {shapes}: {_first_line(e)}; give the "
                             "shape the model expects (input_shape=..., CLI --input-shape) or a sample input "
                             "(example_input=...)") from e
    flat = _flatten(out)
    if not flat:
        raise SparsekitError(f"the model returned {type(out).__name__} with no tensor in it; ONNX export needs "
                             "tensor outputs")
    return flat


# --- export --------------------------------------------------------------------------------------------


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _export_dynamo(net: nn.Module, inputs: tuple[torch.Tensor, ...], n_out: int, opset: int | None,
                   dynamic_batch: bool) -> onnx.ModelProto:
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} if t.dim() else None for t in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, inputs, dynamo=True, optimize=False, verbose=False, opset_version=opset,
                                    dynamic_shapes=dynamic, input_names=_names("input", len(inputs)),
                                    output_names=_names("output", n_out), external_data=False)
    return program.model_proto


def _export_torchscript(net: nn.Module, inputs: tuple[torch.Tensor, ...], n_out: int, opset: int | None,
                        dynamic_batch: bool) -> onnx.ModelProto:
    onnx = _import_onnx()
    in_names, out_names = _names("input", len(inputs)), _names("output", n_out)
    axes = None
    if dynamic_batch:
        axes = {n: {0: "batch"} for n, t in zip(in_names, inputs, strict=True) if t.dim()}
        axes.update({n: {0: "batch"} for n in out_names})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, inputs, buf, dynamo=False, opset_version=opset, do_constant_folding=False,
                          input_names=in_names, output_names=out_names, dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def _export(net: nn.Module, inputs: tuple[torch.Tensor, ...], n_out: int, *, opset: int | None,
            dynamic_batch: bool, exporter: str) -> tuple[onnx.ModelProto, str, str | None]:
    """Export with the dynamo exporter, falling back to TorchScript (``exporter="auto"``)."""
    errors: dict[str, str] = {}
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    for name in order:
        fn = _export_dynamo if name == "dynamo" else _export_torchscript
        try:
            proto = fn(net, inputs, n_out, opset, dynamic_batch)
        except ImportError as e:  # the dynamo exporter needs onnxscript
            errors[name] = f"{_first_line(e)} (pip install onnxscript)"
        except Exception as e:  # exporters raise many types; each one means "this exporter cannot do it"
            errors[name] = _root_reason(e)
        else:
            note = errors.get("dynamo") if name == "torchscript" else None
            return proto, name, note
    tried = "; ".join(f"{k} exporter: {v}" for k, v in errors.items())
    raise SparsekitError(f"torch.onnx cannot export this model: {tried}. Replace the unsupported operation in the "
                         "model's forward (or register a custom ONNX translation), or give another opset")


def _trace_inputs(net: nn.Module, sample: tuple[torch.Tensor, ...], dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """The inputs to export with: for a dynamic batch, batch 2 instead of 1 (torch.export specialises
    axes of size 1 to constants), unless the model does not run at batch 2."""
    if not dynamic_batch or not sample or sample[0].dim() == 0 or sample[0].shape[0] != 1:
        return sample
    two = random_inputs(sample, batch=2, seed=3)
    try:
        _reference(net, two)
    except SparsekitError:
        return sample
    return two


def _strip_debug_info(graph: Any) -> None:
    """Drop the exporters' per-node debug data (stack traces, fx node names, scopes; often a third of a
    sparse file) and the shape annotations of intermediate values (``value_info``, which onnxruntime and
    ``onnx.shape_inference`` infer again). Subgraphs (If/Loop bodies) too."""
    del graph.value_info[:]
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_debug_info(attr.g)
            for sub in attr.graphs:
                _strip_debug_info(sub)


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


# --- finding the masked weights in the graph -----------------------------------------------------------


def _locate(proto: onnx.ModelProto, masks: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
            ) -> dict[str, str | None]:
    """``{masked fqn: initializer name or None}``: by name (any alias of a tied weight), else by shape and
    zero pattern; raises if a found initializer has a nonzero value where its mask is False."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    names_of: dict[str, list[str]] = {}
    for alias, first in aliases.items():
        names_of.setdefault(first, []).append(alias)
    out: dict[str, str | None] = {}
    unmatched = []
    for fqn, mask in masks.items():
        name = next((n for n in names_of.get(aliases.get(fqn, fqn), [fqn]) if n in inits), None)
        if name is None:
            unmatched.append(fqn)
            out[fqn] = None
            continue
        arr = numpy_helper.to_array(inits[name])
        if tuple(arr.shape) != tuple(mask.shape):
            out[fqn] = None
            unmatched.append(fqn)
            continue
        stray = int(np.count_nonzero(arr[~mask.numpy()]))
        if stray:
            raise RuntimeError(f"internal error: {stray} pruned weights of {fqn} are not zero in the exported graph")
        out[fqn] = name
    if unmatched:  # e.g. constants folded by an exporter: find by shape and zero pattern
        taken = {v for v in out.values() if v}
        by_shape: dict[tuple[int, ...], list[Any]] = {}
        for t in proto.graph.initializer:
            if t.name not in taken and t.data_type in (1, 10, 11):
                by_shape.setdefault(tuple(t.dims), []).append(t)
        for fqn in unmatched:
            mask = masks[fqn].numpy()
            for t in by_shape.get(tuple(mask.shape), []):
                if t.name not in taken and np.array_equal(numpy_helper.to_array(t) != 0, mask):
                    out[fqn] = t.name
                    taken.add(t.name)
                    break
    return out


# --- storage encoders ----------------------------------------------------------------------------------


class _Builder:
    """Adds decoding nodes and initializers to a graph with fresh, short names."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self._np = numpy_helper
        taken = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
        taken |= {o for n in graph.node for o in n.output}
        prefix = "sk"
        while any(re.fullmatch(rf"{re.escape(prefix)}\d+\..*", n) for n in taken):
            prefix += "_"
        self.prefix = prefix
        self.shared: dict[str, Any] = {}
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, key: str, value: np.ndarray) -> str:
        """A small constant shared by all decoders (created once)."""
        name = f"{self.prefix}0.{key}"
        if key not in self.shared:
            self.shared[key] = self._np.from_array(value, name)
            self.inits.append(self.shared[key])
        return name


def _gap_plan(nz: np.ndarray, bits: int) -> int:
    """Number of entries (kept plus fillers) of a gap code with ``bits``-bit codes."""
    gaps = np.diff(nz, prepend=-1)
    return int(nz.size + ((gaps - 1) >> bits).sum())


def _gap_code(flat: np.ndarray, nz: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, values)`` of the gap encoding, fillers included (module docstring)."""
    span = 1 << bits
    gaps = np.diff(nz, prepend=-1)
    fillers = (gaps - 1) >> bits
    counts = fillers + 1
    last = np.cumsum(counts) - 1
    total = int(counts.sum())
    codes = np.full(total, span - 1, dtype=np.uint8 if bits == 8 else np.uint16)
    codes[last] = gaps - fillers * span - 1
    values = np.zeros(total, dtype=flat.dtype)
    values[last] = flat[nz]
    return codes, values


def _compact_candidates(flat: np.ndarray, nz: np.ndarray) -> dict[str, int]:
    item = flat.dtype.itemsize
    return {
        "bitmask": (flat.size + 7) // 8 + (nz.size + 1) * item,
        "gap8": _gap_plan(nz, 8) * (1 + item),
        "gap16": _gap_plan(nz, 16) * (2 + item),
    }


def _encode_compact(b: _Builder, index: int, name: str, arr: np.ndarray) -> tuple[str, list[Any], list[Any], int]:
    """Nodes and initializers that rebuild ``arr`` under ``name``; returns (encoding, nodes, inits, payload)."""
    from onnx import TensorProto, helper, numpy_helper

    flat = arr.reshape(-1)
    nz = np.flatnonzero(flat)
    p = f"{b.prefix}{index}."
    numel_name = p + "numel"
    inits = [numpy_helper.from_array(np.array([flat.size], np.int64), numel_name),
             numpy_helper.from_array(np.array(arr.shape, np.int64), p + "shape")]
    nodes = []
    if nz.size == 0:
        zero = numpy_helper.from_array(np.zeros(1, flat.dtype), "value")
        nodes.append(helper.make_node("ConstantOfShape", [numel_name], [p + "flat"], value=zero))
        nodes.append(helper.make_node("Reshape", [p + "flat", p + "shape"], [name]))
        return "zeros", nodes, inits, 0
    sizes = _compact_candidates(flat, nz)
    encoding = min(sizes, key=sizes.__getitem__)
    if encoding == "bitmask":
        bits = np.packbits(flat != 0)
        values = np.concatenate([np.zeros(1, flat.dtype), flat[nz]])
        inits += [numpy_helper.from_array(bits, p + "positions"), numpy_helper.from_array(values, p + "values")]
        shifts = b.const("shifts", np.arange(7, -1, -1, dtype=np.uint8))
        two = b.const("two_u8", np.array(2, np.uint8))
        column = b.const("column", np.array([-1, 1], np.int64))
        row = b.const("row", np.array([-1], np.int64))
        zero = b.const("zero", np.array([0], np.int64))
        axis = b.const("axis", np.array(0, np.int64))
        nodes += [
            helper.make_node("Reshape", [p + "positions", column], [p + "b1"]),
            helper.make_node("BitShift", [p + "b1", shifts], [p + "b2"], direction="RIGHT"),
            helper.make_node("Mod", [p + "b2", two], [p + "b3"]),
            helper.make_node("Reshape", [p + "b3", row], [p + "b4"]),
            helper.make_node("Slice", [p + "b4", zero, numel_name], [p + "b5"]),
            helper.make_node("Cast", [p + "b5"], [p + "b6"], to=TensorProto.INT64),
            helper.make_node("CumSum", [p + "b6", axis], [p + "b7"]),
            helper.make_node("Mul", [p + "b7", p + "b6"], [p + "b8"]),
            helper.make_node("Gather", [p + "values", p + "b8"], [p + "flat"], axis=0),
        ]
    else:
        codes, values = _gap_code(flat, nz, 8 if encoding == "gap8" else 16)
        inits += [numpy_helper.from_array(codes, p + "positions"), numpy_helper.from_array(values, p + "values")]
        one = b.const("one", np.array(1, np.int64))
        axis = b.const("axis", np.array(0, np.int64))
        column = b.const("column", np.array([-1, 1], np.int64))
        zero = numpy_helper.from_array(np.zeros(1, flat.dtype), "value")
        nodes += [
            helper.make_node("Cast", [p + "positions"], [p + "g1"], to=TensorProto.INT64),
            helper.make_node("Add", [p + "g1", one], [p + "g2"]),
            helper.make_node("CumSum", [p + "g2", axis], [p + "g3"]),
            helper.make_node("Sub", [p + "g3", one], [p + "g4"]),
            helper.make_node("Reshape", [p + "g4", column], [p + "g5"]),
            helper.make_node("ConstantOfShape", [numel_name], [p + "g6"], value=zero),
            helper.make_node("ScatterND", [p + "g6", p + "g5", p + "values"], [p + "flat"]),
        ]
    nodes.append(helper.make_node("Reshape", [p + "flat", p + "shape"], [name]))
    payload = sum(len(t.raw_data) for t in inits[2:])
    return encoding, nodes, inits, payload


def _sparse_tensor(name: str, arr: np.ndarray) -> tuple[Any, int]:
    from onnx import helper, numpy_helper

    flat = arr.reshape(-1)
    nz = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[nz], name)
    indices = numpy_helper.from_array(nz, name + ".indices")
    return helper.make_sparse_tensor(values, indices, list(arr.shape)), len(values.raw_data) + len(indices.raw_data)


def encode_storage(proto: onnx.ModelProto, storage: str) -> tuple[onnx.ModelProto, dict[str, TensorStorage]]:
    """A copy of ``proto`` with its float initializers stored as ``storage`` where that is smaller.

    Args:
        proto: a model whose weights are plain (dense) initializers.
        storage: ``"dense"``, ``"sparse-initializer"`` or ``"compact"`` (module docstring).

    Returns:
        ``(model, {initializer name: TensorStorage})`` for every initializer of the main graph.

    Raises:
        SparsekitError: ``compact`` on a model whose opset is below 11.
    """
    onnx = _import_onnx()
    from onnx import numpy_helper

    if storage not in STORAGES[1:]:
        raise ValueError(f"storage must be one of {', '.join(map(repr, STORAGES[1:]))}, got {storage!r}")
    if storage == "compact" and _opset(proto) < COMPACT_MIN_OPSET:
        raise SparsekitError(f"compact storage needs opset >= {COMPACT_MIN_OPSET}, the model has opset "
                             f"{_opset(proto)}; export with opset={COMPACT_MIN_OPSET} or later")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    info: dict[str, TensorStorage] = {}
    builder = _Builder(graph)
    keep, new_nodes, sparse, meta = [], [], [], {}
    input_names = {i.name for i in graph.input}
    for t in graph.initializer:
        arr = numpy_helper.to_array(t)
        dense_bytes = arr.nbytes
        nnz = int(np.count_nonzero(arr))
        dense = TensorStorage(t.name, "dense", tuple(arr.shape), arr.dtype.name, nnz, dense_bytes)
        if storage == "dense" or arr.dtype.name not in _FLOAT_TYPES or arr.size < 2 or t.name in input_names:
            keep.append(t)
            info[t.name] = dense
            continue
        if storage == "sparse-initializer":
            if nnz * (arr.dtype.itemsize + 8) < dense_bytes:
                st, payload = _sparse_tensor(t.name, arr)
                sparse.append(st)
                info[t.name] = TensorStorage(t.name, "sparse", tuple(arr.shape), arr.dtype.name, nnz, payload)
            else:
                keep.append(t)
                info[t.name] = dense
            continue
        index = len(meta) + 1
        encoding, nodes, inits, payload = _encode_compact(builder, index, t.name, arr)
        cost = sum(x.ByteSize() for x in inits) + sum(n.ByteSize() for n in nodes)
        if cost >= t.ByteSize():
            keep.append(t)
            info[t.name] = dense
            continue
        new_nodes += nodes
        keep += inits
        info[t.name] = TensorStorage(t.name, encoding, tuple(arr.shape), arr.dtype.name, nnz, payload)
        meta[t.name] = {"encoding": encoding, "shape": list(arr.shape), "dtype": arr.dtype.name,
                        "values": f"{builder.prefix}{index}.values" if encoding != "zeros" else None,
                        "positions": f"{builder.prefix}{index}.positions" if encoding != "zeros" else None}
    used = {i for n in new_nodes for i in n.input}
    del graph.initializer[:]
    graph.initializer.extend(keep + [t for t in builder.inits if t.name in used])
    graph.sparse_initializer.extend(sparse)
    if sparse:  # a dense type annotation of a sparse initializer fails shape inference ("type case mismatch")
        names = {st.values.name for st in sparse}
        kept_info = [v for v in graph.value_info if v.name not in names]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    if new_nodes:
        nodes = new_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    entries = [p for p in out.metadata_props if p.key != METADATA_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(entries)
    doc = {"storage": storage, "format": COMPACT_FORMAT if storage == "compact" else None, "prefix": builder.prefix,
           "tensors": meta}
    if storage != "dense":
        out.metadata_props.add(key=METADATA_KEY, value=json.dumps(doc, separators=(",", ":")))
    return out, info


def _storage_metadata(proto: onnx.ModelProto) -> dict[str, Any] | None:
    """The ``sparsekit.storage`` metadata entry of a model, or None."""
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            try:
                doc = json.loads(p.value)
            except ValueError as e:
                raise SparsekitError(f"the model's {METADATA_KEY} metadata is not valid JSON: {e}") from e
            if not isinstance(doc, dict) or not isinstance(doc.get("tensors", {}), dict):
                raise SparsekitError(f"the model's {METADATA_KEY} metadata is malformed (expected an object with "
                                     "'tensors')")
            return doc
    return None


def _decode_compact(entry: Mapping[str, Any], inits: Mapping[str, np.ndarray]) -> np.ndarray:
    shape = tuple(int(d) for d in entry["shape"])
    numel = math.prod(shape)
    dtype = np.dtype(entry["dtype"])
    encoding = entry["encoding"]
    if encoding == "zeros":
        return np.zeros(shape, dtype)
    positions, values = inits[entry["positions"]], inits[entry["values"]]
    if encoding == "bitmask":
        bits = np.unpackbits(positions)[:numel].astype(bool)
        flat = np.zeros(numel, dtype)
        flat[bits] = values[1:]
        return flat.reshape(shape)
    if encoding in ("gap8", "gap16"):
        q = np.cumsum(positions.astype(np.int64) + 1) - 1
        flat = np.zeros(numel, dtype)
        flat[q] = values
        return flat.reshape(shape)
    raise SparsekitError(f"unknown compact encoding {encoding!r} (written by a newer sparsekit?); upgrade sparsekit")


def load_onnx_weights(model: onnx.ModelProto | str | os.PathLike) -> dict[str, np.ndarray]:
    """Every initializer of a model's main graph as a dense numpy array, in numpy alone.

    Plain initializers are read as they are, sparse initializers are densified, and the compact
    encodings of sparsekit files are decoded (module docstring); the helper initializers of the compact
    code are left out. Keys are the names the graph uses (the parameters' fqns for exported weights).
    """
    onnx = _import_onnx()
    from onnx import numpy_helper

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    graph = proto.graph
    meta = _storage_metadata(proto) or {}
    encoded: dict[str, Any] = meta.get("tensors", {})
    helper = re.compile(rf"{re.escape(str(meta.get('prefix', 'sk')))}\d+\..*") if encoded else None
    raw = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out = {k: v for k, v in raw.items() if helper is None or not helper.fullmatch(k)}
    for st in graph.sparse_initializer:
        values = numpy_helper.to_array(st.values)
        indices = numpy_helper.to_array(st.indices)
        dense = np.zeros(math.prod(st.dims), values.dtype)
        if indices.ndim == 2:  # coordinate form
            indices = np.ravel_multi_index(tuple(indices.T), tuple(st.dims))
        dense[indices] = values
        out[st.values.name] = dense.reshape(tuple(st.dims))
    for name, entry in encoded.items():
        out[name] = _decode_compact(entry, raw)
    return out


# --- checks --------------------------------------------------------------------------------------------


def _check(proto: onnx.ModelProto) -> str:
    """``onnx.checker`` with shape inference ("full"); only structural ("basic") if inference fails."""
    onnx = _import_onnx()
    try:
        onnx.checker.check_model(proto, full_check=True)
        return "full"
    except onnx.shape_inference.InferenceError:
        onnx.checker.check_model(proto)
        return "basic"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _parity(session: Any, sets: list[tuple[str, tuple[torch.Tensor, ...]]], refs: list[list[torch.Tensor]],
            rtol: float, atol: float) -> list[Parity]:
    """Run ``session`` on every input set and compare with the PyTorch outputs ``refs``."""
    names = [i.name for i in session.get_inputs()]
    results = []
    for (label, inputs), ref in zip(sets, refs, strict=True):
        shapes = [list(t.shape) for t in inputs]
        feed = dict(zip(_names("input", len(inputs)), inputs, strict=True))
        try:
            got = session.run(None, {n: _np(feed[n]) for n in names if n in feed})
        except Exception as e:  # onnxruntime errors (shape mismatch with a fixed batch, ...)
            results.append(Parity(label, shapes, math.inf, math.inf, False, f"onnxruntime failed: {_brief(e)}"))
            continue
        if len(got) != len(ref):
            results.append(Parity(label, shapes, math.inf, math.inf, False,
                                  f"onnxruntime gave {len(got)} outputs, PyTorch {len(ref)}"))
            continue
        worst_abs = worst_rel = 0.0
        problem = None
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            r = _np(r.float() if r.is_floating_point() else r)
            g = np.asarray(g)
            if g.shape != r.shape:
                problem = f"output {i} has shape {list(g.shape)} in onnxruntime, {list(r.shape)} in PyTorch"
                worst_abs = worst_rel = math.inf
                break
            if r.size == 0:
                continue
            diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
            if not np.isfinite(diff).all() and not np.array_equal(np.isnan(g), np.isnan(r)):
                problem = f"output {i}: non-finite values differ"
            diff = np.nan_to_num(diff, nan=0.0, posinf=np.inf)
            scale = float(np.abs(r[np.isfinite(r)]).max(initial=0.0))
            d = float(diff.max())
            worst_abs = max(worst_abs, d)
            worst_rel = max(worst_rel, d / scale if scale else (0.0 if d == 0 else math.inf))
            if d > atol + rtol * scale and problem is None:
                problem = f"output {i}: max abs diff {d:.3g} > atol {atol:g} + rtol {rtol:g} * {scale:.3g}"
        results.append(Parity(label, shapes, worst_abs, worst_rel, problem is None, problem))
    return results


def _set_reference(net: nn.Module, label: str, inputs: tuple[torch.Tensor, ...], sample: tuple[torch.Tensor, ...]
                   ) -> list[torch.Tensor]:
    """PyTorch outputs for a parity set; a clear error if the model itself fails at another batch size."""
    try:
        return _reference(net, inputs)
    except SparsekitError as e:
        if inputs[0].shape[0] == sample[0].shape[0]:
            raise
        raise SparsekitError(f"the model does not run at batch size {inputs[0].shape[0]} (only at "
                             f"{sample[0].shape[0]}?), so the file cannot have a dynamic batch: pass "
                             "dynamic_batch=False (CLI --static-batch)") from e


def _parity_sets(sample: tuple[torch.Tensor, ...], user_sample: bool, dynamic_batch: bool
                 ) -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    batch = sample[0].shape[0] if sample and sample[0].dim() else None
    sets = [("the example input" if user_sample else f"random batch {batch}", sample)]
    if user_sample:
        sets.append((f"random batch {batch}", random_inputs(sample, seed=1)))
    if dynamic_batch and batch is not None:
        other = batch + 2
        sets.append((f"random batch {other}", random_inputs(sample, batch=other, seed=2)))
    return sets


# --- export_onnx ---------------------------------------------------------------------------------------


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the ONNX model")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"{parent} is not a folder, so {path} cannot be written; choose another path")
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to folder {parent} (permission denied); choose another path")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    ticket: Any = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    storage: str = "auto",
    verify: bool = True,
    provider: str = "cpu",
    rtol: float = 1e-3,
    atol: float = 1e-5,
    exporter: str = "auto",
    overwrite: bool = False,
) -> ExportReport:
    """Export ``model`` with its masks baked in to an ONNX file, optionally in sparse storage.

    The model is not changed: a copy is exported, in eval mode, on the CPU, with every pruned weight set
    to exactly zero. ``torch.onnx.export(dynamo=True)`` (torch.export) is tried first and the TorchScript
    exporter (``dynamo=False``) if it fails; the report says which one was used and why. The graph is
    exported without the exporter's optimisation pass, so every parameter stays one initializer named by
    its fqn (onnxruntime does the constant folding and fusions when it loads the file). The result is
    checked with ``onnx.checker`` and, with ``verify``, run in onnxruntime on the sample, on random
    inputs and (with ``dynamic_batch``) on a batch of another size, and compared with PyTorch. The file
    is written atomically only after every check passed: on any error nothing is left behind.

    Args:
        model: the model; its masks (``sparsekit.prune``/``apply_ticket``) are baked in.
        path: the ``.onnx`` file to write.
        example_input: a sample input (tensor, or tuple of tensors for several positional arguments).
        input_shape: instead of a sample, its shape (``(1, 3, 32, 32)``, or a list of shapes); random
            normal inputs of the model's float dtype are used.
        ticket: a :class:`~sparsekit.Ticket` or ticket file to apply to (a copy of) an unpruned model;
            stored weights in the file are used too.
        opset: ONNX opset (default: the exporter's).
        dynamic_batch: make the first axis of every input and output symbolic (``batch``).
        storage: ``"auto"``, ``"dense"``, ``"sparse-initializer"`` or ``"compact"`` (module docstring).
        verify: run the file in onnxruntime and compare with PyTorch; fail if beyond tolerance.
        provider: onnxruntime execution provider for verification, ``"cpu"`` or ``"cuda"``
            (``onnxruntime-gpu``, extra ``gpu``).
        rtol, atol: parity tolerance: ``max|ORT - PyTorch| <= atol + rtol * max|PyTorch|`` per output.
        exporter: ``"auto"`` (dynamo, then TorchScript), ``"dynamo"`` or ``"torchscript"``.
        overwrite: replace ``path`` if it exists.

    Returns:
        An :class:`ExportReport` (``print(report.summary())``).

    Raises:
        SparsekitError: the model does not run on the given input, cannot be exported, or the ONNX file
            does not match PyTorch within tolerance (the message has the numbers).
        ImportError: onnx (or, with ``verify``, onnxruntime) is not installed.
        OSError: ``path`` cannot be written (exists without ``overwrite``, missing folder, permissions).
    """
    _import_onnx()
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(map(repr, STORAGES))}, got {storage!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(map(repr, EXPORTERS))}, got {exporter!r}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise ValueError(f"opset must be an integer >= 7 (or None for the exporter's default), got {opset!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    provider_name = _available_provider(provider) if verify else _provider_name(provider)
    path = Path(path)
    _check_target(path, overwrite)

    net, masks, aliases, ticket_used = _baked_copy(model, ticket)
    lm_note = _logits_only(net)
    if lm_note and example_input is None:
        sample = _token_ids(net, input_shape)
    else:
        sample = _example_inputs(net, example_input, input_shape)
    outputs = _reference(net, sample)
    sets = _parity_sets(sample, example_input is not None, dynamic_batch) if verify else []
    refs = [outputs] + [_set_reference(net, label, inputs, sample) for label, inputs in sets[1:]] if verify else []
    args = (net, sample, outputs, masks, aliases, ticket_used, sets, refs)
    kw = dict(opset=opset, dynamic_batch=dynamic_batch, storage=storage, verify=verify,
              provider_name=provider_name, rtol=rtol, atol=atol)
    first = _export_and_verify(*args, exporter=exporter, **kw)
    result = first
    if first["chosen"] is None and exporter == "auto" and first["used"] == "dynamo":
        # the dynamo graph exported but its *output* failed a check: the TorchScript exporter may get it right
        try:
            second = _export_and_verify(*args, exporter="torchscript", **kw)
        except SparsekitError as e:
            second = None
            first["why"] += f" (TorchScript exporter tried too: {_first_line(e)})"
        if second is not None and second["chosen"] is not None:
            result = second
            result["note"] = f"dynamo export failed the checks ({first['why']}); TorchScript export passed"
        elif second is not None:
            first["why"] += f"; TorchScript exporter tried too: {second['why']}"
    if result["chosen"] is None:
        used = result["used"]
        hint = (" Only the other batch size failed: the exported graph fixes the batch size; pass "
                "dynamic_batch=False (CLI --static-batch)." if result["batch_only"] and all(result["batch_only"])
                else "")
        other = "torchscript" if used == "dynamo" else "dynamo"
        retry = f" Try exporter={other!r}, or loosen" if exporter != "auto" else " Loosen"
        raise SparsekitError(f"the ONNX export ({used} exporter) does not match PyTorch, nothing was written: "
                             f"{result['why']}.{hint}{retry} rtol/atol if the differences are rounding.")
    chosen, built, rejected, sizes, weight_bytes, located = (
        result[k] for k in ("chosen", "built", "rejected", "sizes", "weight_bytes", "located"))
    used, note = result["used"], result["note"]
    if lm_note:
        note = f"{note}; {lm_note}" if note else lm_note
    mode, m, checker, parity = chosen
    data = m.SerializeToString()
    atomic_write_bytes(path, data, overwrite=overwrite)
    info = built[mode][1]
    layers = []
    for fqn, mask in masks.items():
        name = located.get(fqn)
        st = info.get(name) if name else None
        layers.append(LayerExport(fqn, name, tuple(mask.shape), int(mask.sum()), st.encoding if st else "unknown",
                                  st.payload_bytes if st else 0))
    return ExportReport(
        path=path, storage=mode, requested_storage=storage, exporter=used, exporter_note=note, opset=_opset(m),
        dynamic_batch=dynamic_batch, file_bytes=len(data), sizes=sizes, weight_bytes=weight_bytes,
        params=sum(int(k.numel()) for k in masks.values()), kept=sum(r.kept for r in layers), layers=layers,
        parity=parity, rejected=rejected, provider=provider_name if verify else None, rtol=rtol, atol=atol,
        checker=checker)


def _add_provenance(proto: onnx.ModelProto, exporter: str, masks: Mapping[str, Any], ticket: Any) -> None:
    """Metadata entries: sparsekit version, exporter, masked weights and the ticket's provenance."""
    from .. import __version__

    proto.producer_name = "sparsekit"
    proto.producer_version = __version__
    entries = {"sparsekit.version": __version__, "sparsekit.exporter": exporter,
               "sparsekit.masked_weights": str(len(masks))}
    if ticket is not None:
        entries["sparsekit.ticket"] = json.dumps({"kind": ticket.kind, "method": ticket.method,
                                                  "density": ticket.density, "seed": ticket.seed},
                                                 separators=(",", ":"))
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


# --- check_onnx ----------------------------------------------------------------------------------------

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _feed(session: Any, input_shape: Any) -> dict[str, np.ndarray]:
    inputs = session.get_inputs()
    shapes = _as_shapes(input_shape) if input_shape is not None else None
    if shapes is not None and len(shapes) != len(inputs):
        raise ValueError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}) but "
                         f"{len(shapes)} input shapes were given")
    rng = np.random.default_rng(0)
    feed = {}
    for k, i in enumerate(inputs):
        if shapes is not None:
            shape = list(shapes[k])
            declared = i.shape
            fixed = [(a, d) for a, d in enumerate(declared) if isinstance(d, int) and d > 0]
            if len(declared) != len(shape) or any(shape[a] != d for a, d in fixed):
                raise ValueError(f"input {i.name} has shape {declared} in the model; --input-shape {tuple(shape)} "
                                 "does not fit it")
        else:
            shape = []
            for a, d in enumerate(i.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif a == 0:
                    shape.append(1)
                else:
                    raise ValueError(f"input {i.name} has a symbolic size {d!r} on axis {a} (shape {i.shape}); give "
                                     "the shape to run with (input_shape=..., CLI --input-shape)")
        dtype = _ORT_TYPES.get(i.type)
        if dtype is None:
            raise ValueError(f"input {i.name} has type {i.type}, which check_onnx cannot make random data for")
        if dtype == np.bool_:
            feed[i.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feed[i.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feed[i.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def check_onnx(path: str | os.PathLike, *, input_shape: Any = None, provider: str = "cpu", runs: int = 50,
               warmup: int = 3, threads: int | None = None) -> OnnxCheck:
    """Check an ONNX file, load it in onnxruntime and time it.

    Runs ``onnx.checker``, creates an onnxruntime session (timed: reading, decoding sparse or compact
    weights, graph optimisation), runs ``warmup`` untimed and ``runs`` timed inferences on random inputs.

    Args:
        path: the ONNX file.
        input_shape: shape(s) to run with; by default the model's, with a symbolic first axis set to 1.
        provider: ``"cpu"`` or ``"cuda"``.
        runs: timed runs (the median is reported).
        warmup: untimed runs first.
        threads: onnxruntime intra-op threads (default: onnxruntime's).

    Raises:
        FileNotFoundError: no such file.
        SparsekitError: the file is not a valid ONNX model or onnxruntime cannot load or run it.
        ValueError: bad ``input_shape``, ``runs`` or ``warmup``.
    """
    onnx = _import_onnx()
    path = Path(path)
    for name, value in (("runs", runs), ("warmup", warmup)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "runs" else 0):
            raise ValueError(f"{name} must be an integer >= {1 if name == 'runs' else 0}, got {value!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise SparsekitError(f"{path} is not an ONNX model: {_first_line(e)}") from e
    try:
        checker = _check(proto)
    except Exception as e:  # onnx.checker.ValidationError
        raise SparsekitError(f"{path} fails onnx.checker: {_first_line(e)}") from e
    meta = _storage_metadata(proto)
    storage = None
    if isinstance(meta, dict):
        counts: dict[str, int] = {}
        for e in meta.get("tensors", {}).values():
            counts[e.get("encoding", "?")] = counts.get(e.get("encoding", "?"), 0) + 1
        storage = {"storage": meta.get("storage"), "encodings": counts}
    elif len(proto.graph.sparse_initializer):
        storage = {"storage": "sparse-initializer", "encodings": {"sparse": len(proto.graph.sparse_initializer)}}
    data = path.read_bytes()
    t0 = time.perf_counter()
    session = ort_session(data, provider, threads=threads)
    session_s = time.perf_counter() - t0
    feed = _feed(session, input_shape)
    try:
        first = session.run(None, feed)
    except Exception as e:  # onnxruntime errors
        raise SparsekitError(f"onnxruntime cannot run {path} on inputs of shape "
                             f"{', '.join(str(list(v.shape)) for v in feed.values())}: {_first_line(e)}") from e
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return OnnxCheck(
        path=path, file_bytes=len(data), checker=checker, opset=_opset(proto), storage=storage,
        provider=session.get_providers()[0], session_s=session_s,
        inputs=[(k, list(v.shape), v.dtype.name) for k, v in feed.items()],
        outputs=[(o.name, list(np.asarray(v).shape)) for o, v in zip(session.get_outputs(), first, strict=True)],
        latency_ms=times)

