"""Ticket files: safetensors containers of "masks plus seeds" (formats/TICKET.md §9).

* ``er`` tickets store only what rebuilds their masks (seed, method, per-layer densities and
  layouts, flow mode, RNG id): no mask bits, a few KiB whatever the model size.
* Learned masks (kinds ``rewired``, ``strong``, ``learned``) store their bits, each layer in the
  smaller of bit-packing and Rice-coded gaps (:mod:`sparsekit.formats.codecs`).
* ``weights="kept"`` adds the values of the kept weights and every unmasked state_dict entry, so a
  trained weak ticket is a complete model at about ``density`` times the dense size.

Everything read from a file is validated before the model is touched; every problem raises
:class:`~sparsekit.formats.errors.TicketError`. Files are written atomically and never overwrite an
existing file unless asked.
"""

from __future__ import annotations

import json
import math
import os
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._io import atomic_write_bytes
from .._safety import MAX_NAME_LENGTH, check_regular_file, escape_text
from ..flow import repair_flow
from ..layers import Layer, LayerLayout, check_layout, check_parametrizations, find_layers, type_name
from ..masks import CompactMask
from ..rng import RNG_ID
from ..sampling import draw_mask
from ..structures import draw_structured, parse_structure
from ..ticket import LayerRecord, Ticket, model_fingerprint
from .errors import TicketError

__all__ = ["save_ticket", "load_ticket", "apply_ticket", "read_ticket_metadata", "TicketHeader", "serialize",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "sparsekit-ticket"
FORMAT_VERSION = "1.0"
#: Format of files whose masks have a structure other than "element" (formats/TICKET.md §11). A major
#: version: readers of format 1.x only reject newer *major* versions and would otherwise ignore the
#: ``structure`` field and rebuild Bernoulli masks; with 2.0 they fail with "upgrade sparsekit".
STRUCTURED_FORMAT_VERSION = "2.0"
#: Newest major version this reader understands.
READ_MAJOR = 2
KINDS = ("er", "rewired", "strong", "learned")
_MAX_HEADER = 100 * 1024 * 1024
MAX_ELEMENTS = 2**30
"""Default cap on the total weights (elements) the masked layers of a ticket may declare when it is
loaded without a model (formats/TICKET.md §9.2); override with ``load_ticket(max_elements=...)`` or the
``SPARSEKIT_MAX_TICKET_ELEMENTS`` environment variable. With a model the model's own shapes bound the work."""
_MAX_DIM = 2**62
_DECIMAL = re.compile(r"[0-9]{1,20}")  # ASCII digits only: str.isdigit() accepts '²', which int() refuses
_MAX_LAYERS = 1_000_000
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


# --------------------------------------------------------------------------------------------------
# container


_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file, byte-for-byte reproducible (formats/TICKET.md §9.1).

    Header: JSON with sorted keys and no whitespace, ``__metadata__`` first, padded with spaces to a
    multiple of 8 bytes; tensors laid out in sorted name order, little endian, without gaps.
    """
    header: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    body = json.dumps(header, separators=(",", ":"), sort_keys=True)
    meta = json.dumps(metadata, separators=(",", ":"), sort_keys=True)
    text = ('{"__metadata__":' + meta + ("," + body[1:] if len(body) > 2 else "}")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


# --------------------------------------------------------------------------------------------------
# writing


def _record_row(r: LayerRecord, layout: LayerLayout | None, common_dtype: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "fqn": r.fqn, "type": r.module_type, "shape": list(r.shape), "density": r.target_density,
        "nonzeros": r.nonzeros,
    }
    if r.dtype and r.dtype != common_dtype:
        row["dtype"] = r.dtype  # absent means the ticket's "dtype"
    # flow-repair counters are written only when nonzero (absent means 0), keeping er tickets small
    for key, value in (("edges_added", r.edges_added), ("rows_repaired", r.rows_repaired),
                       ("cols_repaired", r.cols_repaired), ("fallbacks", r.fallbacks)):
        if value:
            row[key] = value
    if r.aliases:
        row["aliases"] = list(r.aliases)
    if layout is not None and layout.stack_axis is not None:  # 4th element only when there is a stack axis
        row["layout"] = [layout.out_axis, layout.in_axis, layout.groups, layout.stack_axis]
    elif layout is not None and (layout.out_axis, layout.in_axis, layout.groups) != (0, 1, 1):
        row["layout"] = [layout.out_axis, layout.in_axis, layout.groups]  # absent means [0, 1, 1]
    return row


def save_ticket(
    ticket: Ticket,
    path: str | os.PathLike,
    *,
    weights: str | None = None,
    weights_dtype: torch.dtype | None = None,
    model: nn.Module | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``ticket`` to a safetensors file (atomically).

    Args:
        ticket: from :func:`sparsekit.prune` (kind ``er``) or a learned-mask ticket.
        path: destination, conventionally ``*.safetensors``.
        weights: None (masks only) or ``"kept"``: also the kept weight values and all unmasked
            state_dict entries of the model the ticket is attached to (or ``model``).
        weights_dtype: store floating-point weights in this dtype (e.g. ``torch.float16``).
        model: the model to take weights and the fingerprint from (default: the pruned model).
        overwrite: replace an existing file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    data = ticket_bytes(ticket, weights=weights, weights_dtype=weights_dtype, model=model)
    return atomic_write_bytes(path, data, overwrite=overwrite)


def ticket_bytes(ticket: Ticket, *, weights: str | None = None, weights_dtype: torch.dtype | None = None,
                 model: nn.Module | None = None) -> bytes:
    """The bytes :func:`save_ticket` writes (arguments as there); used to embed tickets in checkpoints."""
    if not isinstance(ticket, Ticket):
        raise TypeError(f"ticket must be a sparsekit.Ticket, got {type(ticket).__name__}")
    if weights not in (None, "kept", "state"):
        raise ValueError(f"weights must be None, 'kept' or 'state', got {weights!r}")
    if ticket.kind not in KINDS:
        raise ValueError(f"ticket kind {ticket.kind!r} unknown; expected one of {KINDS}")
    if weights == "state" and ticket.init is None:
        raise ValueError("weights='state' stores no masked weights, so it needs a ticket whose weights are rebuilt "
                         "from its init seed (a strong ticket); use weights='kept'")
    if model is None and ticket.model_ref is not None:
        model = ticket.model_ref()
    if weights is None and ticket.init is not None and model is not None:
        weights = "state"  # a strong ticket reproduces its network only with the unmasked state (BN statistics)
    if weights is not None and model is None:
        raise ValueError(f"weights={weights!r} needs the model: the ticket refers to no live model (the pruned "
                         "model is gone, or copies of it share this ticket); pass model=...")
    layouts = dict(ticket.layouts)
    if ticket.kind == "er" and any(r.fqn not in layouts for r in ticket.layers if r.target_density < 1):
        raise ValueError("this er ticket lacks layer layouts and cannot be rebuilt from its seed")

    tensors: dict[str, torch.Tensor] = {}
    rows = []
    dtypes = [r.dtype for r in ticket.layers if r.dtype]
    common_dtype = max(set(dtypes), key=dtypes.count) if dtypes else ""
    for r in ticket.layers:
        row = _record_row(r, layouts.get(r.fqn), common_dtype)
        cm = ticket.compact_masks.get(r.fqn)
        if ticket.kind != "er" and cm is not None:
            from .codecs import encode_indices, encode_mask

            if cm.kept is not None:
                encoding, payload, params = encode_indices(cm.kept.cpu().numpy(), cm.numel)
            else:  # same bytes (encodings are canonical), without building the index list
                encoding, payload, params = encode_mask((~cm.pruned).cpu().numpy())
            row["encoding"] = encoding
            row["encoding_params"] = params
            tensors[f"mask/{r.fqn}"] = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else \
                torch.zeros(0, dtype=torch.uint8)
        rows.append(row)

    meta: dict[str, Any] = {
        "kind": ticket.kind, "method": ticket.method, "method_options": dict(ticket.method_options),
        "density": ticket.density, "realised_density": ticket.realised_density, "seed": str(ticket.seed),
        "flow": ticket.flow, "exact": ticket.exact, "rng": ticket.rng, "layers": rows,
    }
    if common_dtype:
        meta["dtype"] = common_dtype
    if ticket.init is not None:
        meta["init"] = ticket.init
    fp = ticket.file_fingerprint or (model_fingerprint(model) if model is not None else None)
    if fp is not None:
        meta["fingerprint"] = fp
    version = FORMAT_VERSION
    if ticket.model_spec:
        meta["model"] = {k: v for k, v in ticket.model_spec.items() if v is not None}
        version = "1.1"  # a minor-version 1.1 feature; files without one stay 1.0, byte for byte
    if any(len(row.get("layout", ())) == 4 for row in rows):
        version = "1.1"  # stacked (expert) layouts, [out, in, groups, stack_axis]
    structure = getattr(ticket, "structure", "element")
    if structure != "element":
        meta["structure"] = str(parse_structure(structure))
        version = STRUCTURED_FORMAT_VERSION
    if weights is not None:
        meta["weights"] = _collect_weights(ticket, model, weights_dtype, tensors, kept=weights == "kept")
    header = {
        "format": FORMAT, "format_version": version, "sparsekit_version": __version__,
        "kind": ticket.kind, "ticket": json.dumps(meta, separators=(",", ":"), sort_keys=True),
    }
    return serialize(tensors, header)


def _collect_weights(ticket: Ticket, model: nn.Module, dtype: torch.dtype | None,
                     tensors: dict[str, torch.Tensor], *, kept: bool = True) -> dict[str, Any]:
    masked = {r.fqn for r in ticket.layers if r.fqn in ticket.compact_masks}
    aliases = {a for r in ticket.layers for a in r.aliases}
    sd = model.state_dict(keep_vars=False)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    for fqn in masked:
        if fqn not in sd:
            raise TicketError(f"the model has no state_dict entry {fqn!r} for the ticket's layer")
        if not kept:
            continue
        cm = ticket.compact_masks[fqn]
        flat = sd[fqn].reshape(-1)
        tensors[f"kept/{fqn}"] = cast(flat.index_select(0, cm.kept_indices().to(flat.device))).contiguous()
    for key, value in sd.items():
        if key in masked or key in aliases:
            continue
        tensors[f"state/{key}"] = cast(value).contiguous()
    return {"mode": "kept" if kept else "state", "dtype": None if dtype is None else str(dtype).replace("torch.", "")}


# --------------------------------------------------------------------------------------------------
# reading


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor table, __metadata__, data offset); validates the safetensors framing."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TicketError(f"{path} is not a ticket file: shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER:
                raise TicketError(f"{path}: header length {n:,} bytes exceeds the {_MAX_HEADER:,}-byte limit for "
                                  "ticket headers (not a ticket, or a hostile file)")
            if 8 + n > size:
                raise TicketError(f"{path} is not a valid safetensors file: header length {n} does not fit "
                                  f"the file size {size} (truncated or not a ticket)")
            raw = f.read(n)
    except OSError as e:
        raise TicketError(f"cannot read ticket file {path}: {e}") from e
    table = _json(path, raw, "the safetensors header")
    if not isinstance(table, dict):
        raise TicketError(f"{path}: safetensors header must be a JSON object")
    meta = table.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TicketError(f"{path} has no sparsekit metadata: not a ticket file")
    data_len = size - 8 - n
    spans = []
    for name, info in table.items():
        if len(name) > MAX_NAME_LENGTH + 16:
            raise TicketError(f"{path}: a tensor name of {len(name):,} characters exceeds the limit of "
                              f"{MAX_NAME_LENGTH + 16} (formats/TICKET.md §9.2)")
        ok = (isinstance(info, dict) and info.get("dtype") in _DTYPES and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIM for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"]))
        if not ok:
            raise TicketError(f"{path}: malformed entry for tensor {escape_text(name)!r} in the safetensors header")
        b, e = info["data_offsets"]
        itemsize = torch.empty(0, dtype=_DTYPES[info["dtype"]]).element_size()
        if not 0 <= b <= e <= data_len or e - b != math.prod(info["shape"]) * itemsize:
            raise TicketError(f"{path}: tensor {escape_text(name)!r} points outside the file or has the wrong byte "
                              "size (truncated or corrupted)")
        spans.append((b, e, name))
    # the tensors must tile the data section: no overlaps, no gaps (formats/TICKET.md §9.1)
    end = 0
    for b, e, name in sorted(spans):
        if b != end:
            what = "overlaps the previous tensor" if b < end else f"leaves a gap of {b - end} bytes before it"
            raise TicketError(f"{path}: tensor {escape_text(name)!r} {what}; tensors must tile the data section "
                              "(corrupted or hostile file)")
        end = e
    if end != data_len:
        raise TicketError(f"{path}: {data_len - end} unexpected trailing bytes after the tensors (corrupted)")
    return table, meta, 8 + n


def _json(path: Path, raw: bytes | str, what: str) -> Any:
    """``json.loads`` whose every failure (syntax, nesting depth, 5000-digit numbers) is a TicketError."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as e:
        raise TicketError(f"{path} is not a valid safetensors file: {what} is not UTF-8 text ({e})") from None
    except RecursionError:
        raise TicketError(f"{path}: {what} is nested too deeply (corrupted or hostile file)") from None
    except ValueError as e:  # JSONDecodeError, and integers longer than Python's digit limit
        raise TicketError(f"{path}: {what} is not JSON ({escape_text(str(e), 120)})") from None


def _parse_meta(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    if meta.get("format") != FORMAT:
        raise TicketError(f"{path} is a safetensors file but not a sparsekit ticket (format={meta.get('format')!r})")
    version = meta.get("format_version", "")
    try:
        major, _minor = (int(x) for x in version.split("."))
    except ValueError:
        raise TicketError(f"{path}: bad format_version {version!r}") from None
    if major > READ_MAJOR:
        raise TicketError(f"{path} uses ticket format {version}, newer than this sparsekit "
                          f"({__version__}, formats up to {READ_MAJOR}.x); upgrade sparsekit to read it")
    if "ticket" not in meta:
        raise TicketError(f"{path}: the ticket metadata is missing")
    t = _json(path, meta["ticket"], "the ticket metadata")
    if not isinstance(t, dict):
        raise TicketError(f"{path}: ticket metadata must be a JSON object")
    return t


def _field(t: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    v = t.get(key)
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise TicketError(f"{where}: field {key!r} missing or of the wrong type ({type(v).__name__})")
    return v


@dataclass
class TicketHeader:
    """A validated ticket header: everything but the tensors (no masks rebuilt or decoded)."""

    path: Path
    table: dict[str, Any]
    offset: int
    meta: dict[str, str]
    ticket: dict[str, Any]
    kind: str
    seed: int
    flow: str | None
    exact: bool
    rng: str
    records: list[LayerRecord]
    layouts: dict[str, LayerLayout]
    rows: list[dict[str, Any]]
    structure: str = "element"

    def tensor_bytes(self, name: str) -> int:
        info = self.table.get(name)
        return 0 if info is None else int(info["data_offsets"][1] - info["data_offsets"][0])


def _opt(row: dict[str, Any], key: str, types: type | tuple[type, ...], default: Any, where: str) -> Any:
    """An optional field of the right type (bools are not ints), or ``default`` when absent."""
    if key not in row:
        return default
    v = row[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise TicketError(f"{where}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _check_init(path: Path, init: Any) -> None:
    """``init`` as TICKET.md §9.5 defines it: a known scheme, a decimal seed in [0, 2**64), a bool scale_fan."""
    from ..init import INIT_SCHEMES

    if not isinstance(init, dict):
        raise TicketError(f"{path}: field 'init' must be an object, got {type(init).__name__}")
    scheme = init.get("scheme")
    if scheme not in INIT_SCHEMES:
        raise TicketError(f"{path}: init scheme {escape_text(str(scheme), 60)!r} unknown; this sparsekit knows "
                          f"{', '.join(INIT_SCHEMES)}")
    seed = init.get("seed")
    if not isinstance(seed, str) or not _DECIMAL.fullmatch(seed) or not 0 <= int(seed) < 2**64:
        raise TicketError(f"{path}: init seed must be a decimal string in [0, 2**64), got "
                          f"{escape_text(repr(seed), 60)} ({type(seed).__name__})")
    if not isinstance(init.get("scale_fan", False), bool):
        raise TicketError(f"{path}: init scale_fan must be true or false, got "
                          f"{escape_text(repr(init['scale_fan']), 60)}")


def read_ticket_metadata(path: str | os.PathLike) -> TicketHeader:
    """Read and validate a ticket's header and metadata (fast: no tensors are read, no masks built).

    Raises:
        TicketError: the file is missing, not a ticket, truncated, of a newer major version, or its
            metadata is malformed.
    """
    path = Path(path)
    try:
        check_regular_file(path, "ticket file")
    except (OSError, ValueError) as e:
        raise TicketError(str(e)) from None
    table, meta, offset = _read_header(path)
    t = _parse_meta(path, meta)
    where = str(path)
    kind = _field(t, "kind", str, where)
    if kind not in KINDS:
        raise TicketError(f"{path}: unknown ticket kind {kind!r}; this sparsekit reads {', '.join(KINDS)}")
    rng_id = _field(t, "rng", str, where)
    if kind == "er" and rng_id != RNG_ID:
        raise TicketError(f"{path}: masks derived with generator {rng_id!r}; this sparsekit implements {RNG_ID}")
    seed_text = _field(t, "seed", str, where)
    if not _DECIMAL.fullmatch(seed_text) or int(seed_text) >= 2**64:
        raise TicketError(f"{path}: seed {escape_text(seed_text, 40)!r} is not a decimal integer in [0, 2**64)")
    seed = int(seed_text)
    if not 0 <= seed < 2**64:
        raise TicketError(f"{path}: seed out of range")
    flow = t.get("flow")
    if flow not in ("repair", "resample", None):
        raise TicketError(f"{path}: unknown flow mode {flow!r}")
    exact = _field(t, "exact", bool, where)
    rows = _field(t, "layers", list, where)
    if len(rows) > _MAX_LAYERS:
        raise TicketError(f"{path}: {len(rows):,} layers exceed the limit of {_MAX_LAYERS:,}")
    for key, types in (("method", str), ("method_options", dict), ("density", (int, float)), ("dtype", str),
                       ("init", dict), ("fingerprint", dict), ("weights", dict), ("model", dict)):
        _opt(t, key, types, None, where)
    model = t.get("model")
    if model is not None and not (isinstance(model.get("spec"), str) and isinstance(model.get("arch", ""), str)):
        raise TicketError(f"{where}: field 'model' must be {{'spec': string, 'arch': optional string}}")
    structure = _read_structure(path, t, meta)
    default_dtype = t.get("dtype", "")
    if "init" in t:
        _check_init(path, t["init"])
    records, layouts = [], {}
    for i, row in enumerate(rows):
        rw = f"{path}: layer {i}"
        if not isinstance(row, dict):
            raise TicketError(f"{rw}: not an object")
        fqn = _field(row, "fqn", str, rw)
        if not 0 < len(fqn) <= MAX_NAME_LENGTH:
            raise TicketError(f"{rw}: layer name of {len(fqn):,} characters; names must have 1 to "
                              f"{MAX_NAME_LENGTH} (formats/TICKET.md §9.2)")
        if fqn in layouts:
            raise TicketError(f"{rw}: layer {escape_text(fqn)} appears twice (duplicate rows)")
        shape = _field(row, "shape", list, rw)
        if (not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIM for d in shape)
                or not 1 <= len(shape) <= 8 or math.prod(shape) >= _MAX_DIM):
            raise TicketError(f"{rw} ({escape_text(fqn)}): bad shape {escape_text(str(shape), 80)} (1 to 8 "
                              f"non-negative sizes with fewer than 2**62 elements)")
        numel = math.prod(shape)
        p = _field(row, "density", (float, int), rw)
        if not 0 <= p <= 1:
            raise TicketError(f"{rw} ({fqn}): density {p!r} outside [0, 1]")
        nnz = _field(row, "nonzeros", int, rw)
        if not 0 <= nnz <= numel:
            raise TicketError(f"{rw} ({fqn}): nonzeros {nnz} outside [0, {numel}]")
        lay = _opt(row, "layout", list, [0, 1, 1], rw)
        if not (len(lay) in (3, 4) and all(isinstance(x, int) and not isinstance(x, bool) and abs(x) < _MAX_DIM
                                      for x in lay)):
            raise TicketError(f"{rw} ({fqn}): bad layout {lay!r}")
        layouts[fqn] = LayerLayout(*lay)
        counters = [_opt(row, k, int, 0, rw) for k in ("edges_added", "rows_repaired", "cols_repaired", "fallbacks")]
        if not all(0 <= c < _MAX_DIM for c in counters):
            raise TicketError(f"{rw} ({escape_text(fqn)}): flow-repair counters out of range")
        aliases = _opt(row, "aliases", list, [], rw)
        if not all(isinstance(a, str) and 0 < len(a) <= MAX_NAME_LENGTH for a in aliases):
            raise TicketError(f"{rw} ({fqn}): aliases must be strings")
        records.append(LayerRecord(fqn, _opt(row, "type", str, "", rw), tuple(shape), float(p), nnz, *counters,
                                   tuple(aliases), _opt(row, "dtype", str, default_dtype, rw)))
    if structure.kind == "nm":
        q = structure.n / structure.m
        for rec in records:
            if rec.target_density not in (q, 1.0):
                raise TicketError(f"{path}: layer {escape_text(rec.fqn)} has density {rec.target_density!r}; an "
                                  f"{structure} ticket has only layers of density {q:g} or 1")
    return TicketHeader(path, table, offset, meta, t, kind, seed, flow, exact, rng_id, records, layouts, rows,
                        str(structure))


def _read_structure(path: Path, t: dict[str, Any], meta: dict[str, str]):
    """The ``structure`` field (§11): absent means element; only in format 2.0+; validated combinations."""
    if "structure" not in t:
        return parse_structure(None)
    raw = t["structure"]
    if not isinstance(raw, str):
        raise TicketError(f"{path}: field 'structure' must be a string, got {type(raw).__name__}")
    try:
        st = parse_structure(raw)
    except ValueError:
        raise TicketError(f"{path}: unknown mask structure {escape_text(raw, 60)!r}; this sparsekit knows element, "
                          "block:HxW, fanin and nm:N:M (upgrade sparsekit if the file is newer)") from None
    if raw != str(st):
        raise TicketError(f"{path}: structure {escape_text(raw, 60)!r} is not in canonical form ({str(st)!r})")
    if not st.is_element:
        if int(meta.get("format_version", "0.0").split(".")[0]) < 2:
            raise TicketError(f"{path}: structure {raw!r} needs ticket format 2.0, the file says "
                              f"{escape_text(meta.get('format_version', ''), 20)}")
        if t.get("exact") is True or t.get("flow") == "resample":
            raise TicketError(f"{path}: structure {raw!r} is not defined with exact=true or flow='resample'")
    return st


def _max_elements(max_elements: int | None) -> int:
    if max_elements is not None:
        if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 0:
            raise TypeError(f"max_elements must be a non-negative int or None, got {max_elements!r}")
        return max_elements
    env = os.environ.get("SPARSEKIT_MAX_TICKET_ELEMENTS")
    if env is None:
        return MAX_ELEMENTS
    if not re.fullmatch(r"[0-9]{1,30}", env.strip()):
        raise TicketError(f"SPARSEKIT_MAX_TICKET_ELEMENTS={escape_text(env, 40)!r} is not a non-negative integer")
    return int(env)


def _check_bounds(h: TicketHeader, model: nn.Module | Mapping[str, torch.Tensor] | None,
                  max_elements: int | None) -> None:
    """Bound the work a ticket asks for before anything is allocated (formats/TICKET.md §9.2).

    With a model, every layer must name one of its parameters with the same shape (so the masks are at
    most as large as the model); without one, the masked layers together may declare at most
    ``max_elements`` weights.
    """
    if model is not None:
        problems = _shape_problems(model, h.records)
        if problems:
            raise TicketError(f"ticket {h.path} does not fit this model: " + "; ".join(problems))
        return
    cap = _max_elements(max_elements)
    total = sum(r.numel for r in h.records if r.target_density < 1)
    if total > cap:
        raise TicketError(f"{h.path}: its masked layers declare {total:,} weights, over the limit of {cap:,} for a "
                          "ticket loaded without its model; load it with the model (apply_ticket(model, path), "
                          "load_ticket(path, model=...)) or raise the limit (max_elements=..., "
                          "SPARSEKIT_MAX_TICKET_ELEMENTS)")


def _shape_problems(model: nn.Module | Mapping[str, torch.Tensor], records: list[LayerRecord]) -> list[str]:
    params = dict(model.named_parameters(remove_duplicate=False)) if isinstance(model, nn.Module) else dict(model)
    missing = [escape_text(r.fqn, 80) for r in records if r.fqn not in params]
    wrong = [f"{escape_text(r.fqn, 80)} (ticket {tuple(r.shape)}, model {tuple(params[r.fqn].shape)})"
             for r in records if r.fqn in params and tuple(params[r.fqn].shape) != tuple(r.shape)]
    problems = []
    if missing:
        problems.append(f"missing in the model: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if wrong:
        problems.append(f"shape differs: {'; '.join(wrong[:8])}")
    return problems


def load_ticket(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                model: nn.Module | Mapping[str, torch.Tensor] | None = None, max_elements: int | None = None) -> Ticket:
    """Read and validate a ticket file; ``er`` masks are rebuilt from the seed (bit-identical).

    Args:
        path: the ticket file.
        device: where the masks are built.
        model: the model the ticket is for (a module, or a state_dict of tensors); its layers must be there
            with the same shapes, checked before any mask is built, so a ticket never asks for more work than
            the model's own size.
        max_elements: without ``model``, the most weights the masked layers may declare together
            (default :data:`MAX_ELEMENTS`, or the ``SPARSEKIT_MAX_TICKET_ELEMENTS`` environment variable).

    Raises:
        TicketError: anything wrong with the file, or it asks for more than the bound above.
    """
    h = read_ticket_metadata(path)
    if isinstance(model, nn.Module):
        from .._wrappers import unwrap

        model = unwrap(model)
    _check_bounds(h, model, max_elements)
    raw = _read_tensors(h.path, h.table, h.offset)
    masks: dict[str, CompactMask] = {}
    for i, (row, rec) in enumerate(zip(h.rows, h.records, strict=True)):
        rw = f"{h.path}: layer {i}"
        if rec.target_density >= 1:
            continue
        if h.kind == "er":
            cm = _rebuild_er(rec.fqn, rec.shape, h.layouts[rec.fqn], rec.target_density, h.seed, h.flow, h.exact,
                             device, rw, h.structure)
        else:
            cm = _decode_layer(row, raw, rec.fqn, rec.shape, rw)
        if cm.nnz != rec.nonzeros:
            raise TicketError(f"{rw} ({rec.fqn}): decoded mask has {cm.nnz} nonzeros, the ticket says "
                              f"{rec.nonzeros} (corrupted file or a different generator)")
        masks[rec.fqn] = cm
    t = h.ticket
    ticket = Ticket(t.get("method", ""), float(t.get("density", 0.0)), h.seed, h.flow, h.exact, h.records, masks,
                    dict(t.get("method_options", {})), kind=h.kind, rng=h.rng,
                    sparsekit_version=h.meta.get("sparsekit_version", ""))
    ticket.layouts = h.layouts
    ticket.structure = h.structure
    ticket.init = t.get("init")
    ticket.file_fingerprint = t.get("fingerprint")
    if isinstance(t.get("model"), dict):
        ticket.model_spec = {"spec": t["model"]["spec"], "arch": t["model"].get("arch")}
    if "weights" in t:
        mode = t["weights"].get("mode")
        if mode not in ("kept", "state"):
            raise TicketError(f"{h.path}: unknown weights mode {mode!r} (this sparsekit reads 'kept' and 'state')")
        if mode == "state" and ticket.init is None:
            raise TicketError(f"{h.path}: weights mode 'state' without 'init': the masked weights cannot be rebuilt")
        ticket.weights = _collect_loaded_weights(h.path, raw, masks, h.records, kept=mode == "kept")
    return ticket


def _read_tensors(path: Path, table: dict[str, Any], offset: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if not table:
        return out
    with open(path, "rb") as f:
        for name, info in table.items():
            b, e = info["data_offsets"]
            f.seek(offset + b)
            buf = bytearray(f.read(e - b))
            dtype = _DTYPES[info["dtype"]]
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(info["shape"])
    return out


def _rebuild_er(fqn: str, shape: tuple[int, ...], layout: LayerLayout, p: float, seed: int, flow: str | None,
                exact: bool, device: torch.device | str, where: str, structure: str = "element") -> CompactMask:
    try:
        check_layout(fqn, shape, layout)  # axes inside the shape, groups dividing it
        layer = Layer(fqn, fqn.rpartition(".")[0], "", shape, layout, torch.empty(0))
        layer.grid()
        st = parse_structure(structure)
        if st.is_element:
            mask = draw_mask(fqn, shape, p, seed, exact=exact, device=device)
            repair_flow(layer, mask, p, seed, flow)
        else:
            mask, _ = draw_structured(layer, p, seed, st, flow, device=device)
    except (ValueError, ZeroDivisionError, RuntimeError) as e:
        raise TicketError(f"{where} ({fqn}): cannot rebuild the mask: {e}") from e
    return CompactMask.from_bool(mask, consume=True, density_hint=p)


def _decode_layer(row: dict[str, Any], raw: dict[str, torch.Tensor], fqn: str, shape: tuple[int, ...],
                  where: str) -> CompactMask:
    from .codecs import decode_indices

    payload = raw.get(f"mask/{fqn}")
    if payload is None:
        raise TicketError(f"{where} ({fqn}): mask bits missing from the file (no tensor 'mask/{fqn}')")
    if payload.dtype != torch.uint8 or payload.dim() != 1:
        raise TicketError(f"{where} ({fqn}): mask tensor has dtype {str(payload.dtype).replace('torch.', '')} and "
                          f"{payload.dim()} dimensions; mask payloads are 1-D U8 (formats/TICKET.md §9.3)")
    encoding = row.get("encoding")
    params = row.get("encoding_params", {})
    if not isinstance(encoding, str) or not isinstance(params, dict):
        raise TicketError(f"{where} ({fqn}): encoding missing")
    numel = math.prod(shape)
    try:
        kept = decode_indices(encoding, payload.numpy().tobytes(), numel, params)
    except TicketError as e:
        raise TicketError(f"{where} ({fqn}): {e}") from None
    kept_t = torch.from_numpy(np.ascontiguousarray(kept, dtype=np.int64))
    if 8 * kept_t.numel() < numel:
        return CompactMask(shape, kept_t.numel(), kept_t, None)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[kept_t] = True
    return CompactMask(shape, kept_t.numel(), None, (~mask).view(shape))


def _collect_loaded_weights(path: Path, raw: dict[str, torch.Tensor], masks: dict[str, CompactMask],
                            records: list[LayerRecord], *, kept: bool = True) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for r in records:
        if r.fqn not in masks or not kept:
            continue
        vals = raw.get(f"kept/{r.fqn}")
        if vals is None or vals.dim() != 1 or vals.numel() != masks[r.fqn].nnz:
            raise TicketError(f"{path}: kept weights of {r.fqn} missing or of the wrong length")
        weights[f"kept/{r.fqn}"] = vals
    for name, t in raw.items():
        if name.startswith("state/"):
            weights[name] = t
    return weights


# --------------------------------------------------------------------------------------------------
# applying


def apply_ticket(model: nn.Module, ticket: Ticket | str | os.PathLike, *, strict: bool = True) -> Ticket:
    """Attach a ticket's masks (and its weights, if it has them) to ``model``; all or nothing.

    Everything is checked first (layers present with the same shapes and, with ``strict``, the same
    module types and the same parameter set as the model the ticket was saved from); on any
    mismatch a :class:`TicketError` names the layers and the model is not changed.
    """
    from .._wrappers import unwrap
    from ..attach import _remember_ticket, attach, is_pruned

    model = unwrap(model)  # torch.compile / DDP wrappers: names of the module inside
    if not isinstance(ticket, Ticket):
        ticket = load_ticket(ticket, model=model)  # shapes checked against the model before any mask is built
    names = [r.fqn for r in ticket.layers]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise TicketError(f"ticket lists layer {escape_text(dup[0], 80)} more than once (duplicate rows)")
    problems = _shape_problems(model, ticket.layers)
    types = []
    if strict:
        owners = _owner_types(model)
        types = [f"{r.fqn} (ticket {r.module_type}, model {'/'.join(sorted(owners[r.fqn]))})" for r in ticket.layers
                 if r.fqn in owners and r.module_type and r.module_type not in owners[r.fqn]]
    if types:
        problems.append(f"module type differs: {'; '.join(types[:8])}")
    fp = ticket.file_fingerprint
    digest = fp.get("params_sha256") if fp else None
    if strict and not problems and digest is not None and digest != model_fingerprint(model)["params_sha256"]:
        known = {r.fqn for r in ticket.layers} | {a for r in ticket.layers for a in r.aliases}
        extra = [L.fqn for L in find_layers(model) if L.fqn not in known]
        detail = f"extra in the model: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else "") if extra else \
            "the unmasked parameters (names or shapes) differ"
        problems.append(f"{detail}; the model differs from the one the ticket was saved from "
                        "(pass strict=False to apply to the masked layers anyway)")
    if problems:
        raise TicketError("ticket does not fit this model: " + "; ".join(problems))
    if is_pruned(model):
        raise TicketError("the model already carries sparsekit masks; call sparsekit.finalize(model) first")
    # every check runs before the first write: the model is changed completely or not at all
    check_parametrizations(model, ticket.compact_masks)
    weights = getattr(ticket, "weights", None)
    if weights:
        _check_weights(model, ticket, weights)
    drawn = _draw_init_weights(model, ticket) if ticket.init is not None else {}
    with torch.no_grad():
        for fqn, value in drawn.items():
            model.get_parameter(fqn).copy_(value)
    if weights:
        _load_weights(model, ticket, weights)
    attach(model, ticket.compact_masks)
    ticket.model_ref = weakref.ref(model)
    _remember_ticket(model, ticket)
    return ticket


@torch.no_grad()
def _draw_init_weights(model: nn.Module, ticket: Ticket) -> dict[str, torch.Tensor]:
    """The masked weights of a ticket with ``init``, drawn from the counter RNG (TICKET.md §9.5).

    Nothing is written: every layout is checked and every weight drawn first, so a bad layer leaves
    the model untouched (apply_ticket writes them all afterwards).
    """
    from ..init import init_weight

    init = ticket.init
    _check_init(Path("ticket"), init)
    seed, scale_fan = int(init["seed"]), init.get("scale_fan", False)
    for r in ticket.layers:
        layout = ticket.layouts.get(r.fqn)
        if layout is None:
            raise TicketError(f"ticket layer {r.fqn} has no layout; its weights cannot be rebuilt")
        try:
            check_layout(r.fqn, tuple(r.shape), layout)
        except ValueError as e:
            lay = [layout.out_axis, layout.in_axis, layout.groups]
            raise TicketError(f"ticket layer {r.fqn}: layout {lay} does not fit its shape {tuple(r.shape)}: "
                              f"{e}") from None
    drawn = {}
    for r in ticket.layers:
        p = model.get_parameter(r.fqn)
        d = r.nonzeros / r.numel if r.numel else 1.0
        try:
            drawn[r.fqn] = init_weight(r.fqn, tuple(p.shape), ticket.layouts[r.fqn], init["scheme"], seed,
                                       density=max(d, 1e-12), scale_fan=scale_fan, dtype=p.dtype, device=p.device)
        except (ValueError, IndexError, RuntimeError, ZeroDivisionError) as e:
            raise TicketError(f"ticket layer {r.fqn}: cannot draw its init weights: {e}") from None
    return drawn


def _owner_types(model: nn.Module) -> dict[str, set[str]]:
    """For every parameter name, the type names of all modules owning that Parameter (tied weights)."""
    by_id: dict[int, set[str]] = {}
    names: dict[str, int] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    for mname, m in modules.items():
        for pname, p in m.named_parameters(recurse=False):
            by_id.setdefault(id(p), set()).add(type_name(m))
            names[f"{mname}.{pname}" if mname else pname] = id(p)
            if ".parametrizations." in f".{mname}":  # a parametrization's original: its layer's type counts
                owner = modules.get(f".{mname}".rsplit(".parametrizations.", 1)[0][1:])
                if owner is not None:
                    by_id[id(p)].add(type_name(owner))
    return {n: by_id[i] for n, i in names.items()}


def _check_weights(model: nn.Module, ticket: Ticket, weights: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    for name, t in weights.items():
        if name.startswith("state/"):
            key = name[len("state/"):]
            if key not in sd:
                raise TicketError(f"ticket weight {key!r} has no place in the model (strict architecture mismatch)")
            if tuple(sd[key].shape) != tuple(t.shape):
                raise TicketError(f"ticket weight {key!r} has shape {tuple(t.shape)}, model {tuple(sd[key].shape)}")


@torch.no_grad()
def _load_weights(model: nn.Module, ticket: Ticket, weights: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict(keep_vars=True)
    for name, t in weights.items():
        if name.startswith("state/"):
            target = sd[name[len("state/"):]]
            target.copy_(t.to(target.dtype))
    for fqn, cm in ticket.compact_masks.items():
        vals = weights.get(f"kept/{fqn}")
        if vals is None:
            continue
        p = model.get_parameter(fqn)
        flat = torch.zeros(p.numel(), dtype=p.dtype)
        flat[cm.kept_indices().cpu()] = vals.to(p.dtype)
        p.copy_(flat.view(p.shape))
