"""ONNX weight storages: sparse initializers and the ``sparsekit-compact-v1`` code, encoded into a model
(:func:`encode_storage`) and decoded back in numpy (:func:`load_onnx_weights`). The format is described in
:mod:`sparsekit.formats.onnx`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SparsekitError
from .onnx_base import (
    _FLOAT_TYPES,
    COMPACT_FORMAT,
    COMPACT_MIN_OPSET,
    METADATA_KEY,
    STORAGES,
    TensorStorage,
    _import_onnx,
    _opset,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx

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


