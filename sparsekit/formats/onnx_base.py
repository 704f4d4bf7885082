"""Shared pieces of the ONNX modules: constants, result records, optional imports, inputs, error text.

Used by :mod:`sparsekit.formats.onnx` (export), :mod:`sparsekit.formats.onnx_storage` (storage codecs) and
:mod:`sparsekit.formats.onnx_verify` (checks); users import everything from :mod:`sparsekit.formats.onnx`.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import SparsekitError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnxruntime

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




def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


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
