"""Fuzzing the ticket loader: mutated, truncated and edited files only ever raise TicketError.

Runs at least 2000 cases (hypothesis), each loading a damaged file and, when it loads, applying it;
after every failed apply the model must be exactly as before.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
from sparsekit import TicketError
from sparsekit.masks import CompactMask


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Conv1d(10, 6, 3, groups=2), nn.Linear(4, 3))


def _valid_files(tmp) -> dict[str, bytes]:
    out = {}
    m = _model()
    t = sparsekit.prune(m, "er-pyramidal", 0.3, seed=5)
    out["er"] = sparsekit.save_ticket(t, tmp / "er.safetensors").read_bytes()
    out["weights"] = sparsekit.save_ticket(t, tmp / "w.safetensors", weights="kept").read_bytes()
    gen = torch.Generator().manual_seed(1)
    t.kind = "rewired"
    t.compact_masks = {k: CompactMask.from_bool(torch.rand(v.shape, generator=gen) < 0.2) for k, v in t.masks.items()}
    for r in t.layers:
        if r.fqn in t.compact_masks:
            r.nonzeros = t.compact_masks[r.fqn].nnz
    out["rewired"] = sparsekit.save_ticket(t, tmp / "r.safetensors").read_bytes()
    return out


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return _valid_files(tmp_path_factory.mktemp("valid"))


def _header_edit(data: bytes, key: str, value) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["ticket"])
    if key.startswith("top:"):
        meta[key[4:]] = value
    elif meta["layers"]:
        meta["layers"][0][key] = value
    header["__metadata__"]["ticket"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16), st.just(0)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),
    st.tuples(st.just("field"), st.sampled_from(["shape", "density", "nonzeros", "layout", "fqn", "encoding",
                                                 "encoding_params", "edges_added", "rows_repaired", "aliases",
                                                 "dtype", "type", "top:seed", "top:density", "top:method_options",
                                                 "top:method", "top:flow", "top:exact", "top:layers", "top:dtype",
                                                 "top:init", "top:fingerprint", "top:weights"]),
              st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True), st.text(max_size=5), st.none(),
                        st.lists(st.integers(-3, 50), max_size=4), st.dictionaries(st.text(max_size=3),
                                                                                     st.integers(-2, 99)))),
)


def _mutate(data: bytes, m) -> bytes:
    kind, a, b = m
    if kind == "flip":
        i = a % len(data)
        return data[:i] + bytes([data[i] ^ b]) + data[i + 1:]
    if kind == "truncate":
        return data[: a % len(data)]
    if kind == "append":
        return data + a
    if kind == "length":
        return struct.pack("<Q", a) + data[8:]
    return _header_edit(data, a, b)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(which=st.sampled_from(["er", "weights", "rewired"]), m=mutation)
def test_damaged_files_only_raise_ticket_error(valid, tmp_path, which, m):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(_mutate(valid[which], m))
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        ticket = sparsekit.load_ticket(path)
    except TicketError:
        return
    try:
        sparsekit.apply_ticket(model, ticket)
    except TicketError:
        assert not sparsekit.is_pruned(model)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- hostile edits of the tensor table and the metadata text (issue 20) --------------------------------------


def _table_edit(data: bytes, pick: int, key: str, value) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    if key == "ticket_text":
        header["__metadata__"]["ticket"] = value
    elif names:
        header[names[pick % len(names)]][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


_big = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 10**30]))
table_edit = st.one_of(
    st.tuples(st.just("data_offsets"), st.lists(_big, min_size=0, max_size=3)),
    st.tuples(st.just("shape"), st.lists(_big, min_size=0, max_size=4)),
    st.tuples(st.just("dtype"), st.sampled_from(["U8", "I8", "F16", "F64", "BOOL", "X9", ""])),
    st.tuples(st.just("ticket_text"), st.one_of(
        st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
        st.integers(4000, 6000).map(lambda d: '{"kind": "er", "seed": ' + "7" * d + "}"),
        st.integers(1025, 5000).map(lambda k: json.dumps({
            "kind": "er", "rng": sparsekit.rng.RNG_ID, "seed": "1", "exact": False, "flow": "repair",
            "layers": [{"fqn": "x" * k, "shape": [2, 2], "density": 0.5, "nonzeros": 2}]})),
        st.sampled_from(['{"kind": "er", "init": {"scheme": "kaiming-normal", "seed": [1]}}', "NaN", "{}", "[]",
                         '{"kind": "er", "rng": "sk-ctr64-v1", "seed": "1", "exact": false, "layers": '
                         '[{"fqn": "0.weight", "shape": [1e400], "density": 1, "nonzeros": 0}]}']))),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(which=st.sampled_from(["er", "weights", "rewired"]), pick=st.integers(0, 50), edit=table_edit)
def test_hostile_table_and_metadata_edits_only_raise_ticket_error(valid, tmp_path, which, pick, edit):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(_table_edit(valid[which], pick, *edit))
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        sparsekit.apply_ticket(model, path)
    except TicketError:
        assert not sparsekit.is_pruned(model)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_overlapping_tensors_are_rejected(valid, tmp_path):
    n = struct.unpack("<Q", valid["weights"][:8])[0]
    header = json.loads(valid["weights"][8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    first, second = names[0], names[1]
    header[second]["data_offsets"] = list(header[first]["data_offsets"])  # point at the same bytes
    header[second]["shape"], header[second]["dtype"] = header[first]["shape"], header[first]["dtype"]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + valid["weights"][8 + n:])
    with pytest.raises(TicketError, match="overlaps the previous tensor|leaves a gap|trailing bytes"):
        sparsekit.load_ticket(path)
