"""Checking ONNX files: ``onnx.checker``, onnxruntime parity with PyTorch, and :func:`check_onnx` timing."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import SparsekitError
from .onnx_base import (
    OnnxCheck,
    Parity,
    _as_shapes,
    _brief,
    _first_line,
    _import_onnx,
    _names,
    _opset,
    _reference,
    ort_session,
    random_inputs,
)
from .onnx_storage import _storage_metadata

if TYPE_CHECKING:  # pragma: no cover
    import onnx

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


