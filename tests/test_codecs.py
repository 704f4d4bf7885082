"""Mask codecs (formats/TICKET.md §10): round trips, exact bytes, sizes near the entropy bound, hostile input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsekit.errors import SparsekitError
from sparsekit.formats import codecs
from sparsekit.formats.codecs import (
    MAX_K,
    RICE,
    U8,
    decode_indices,
    decode_mask,
    encode_indices,
    encode_mask,
    entropy_bound_bytes,
    pack_bits,
    unpack_bits,
)
from sparsekit.formats.errors import TicketError
from sparsekit.masks import CompactMask

# ------------------------------------------------------------------ independent reference encoder
# Written bit by bit with Python integers, straight from the spec, to check the vectorised codec.


def _ref_uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ref_gaps(positions: list[int]) -> list[int]:
    return [p - (positions[j - 1] if j else -1) - 1 for j, p in enumerate(positions)]


def _ref_rice_bits(gaps: list[int], k: int) -> int:
    return sum(k + 1 + (g >> k) for g in gaps)


def _ref_best_k(gaps: list[int]) -> int:
    if not gaps:
        return 0
    costs = [_ref_rice_bits(gaps, k) for k in range(MAX_K + 1)]
    return costs.index(min(costs))  # smallest k on ties


def _ref_rice(positions: list[int], k: int) -> bytes:
    if not positions:
        return b"\x00\x00"
    gaps = _ref_gaps(positions)
    nnz = len(gaps)
    rem = 0
    for j, g in enumerate(gaps):
        rem |= (g & ((1 << k) - 1)) << (j * k)
    quo, nbits = 0, 0
    for g in gaps:
        q = g >> k
        quo |= ((1 << q) - 1) << nbits  # q one bits, then a zero bit
        nbits += q + 1
    return (
        bytes([k])
        + _ref_uleb128(nnz)
        + rem.to_bytes((nnz * k + 7) // 8, "little")
        + quo.to_bytes((nbits + 7) // 8, "little")
    )


def _ref_u8(mask: np.ndarray) -> bytes:
    flat = [bool(b) for b in mask.reshape(-1)]
    value = sum(1 << i for i, b in enumerate(flat) if b)
    return value.to_bytes((len(flat) + 7) // 8, "little")


# ---------------------------------------------------------------------------------- strategies


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    shape = draw(
        st.one_of(
            st.integers(0, 5000).map(lambda n: (n,)),
            st.sampled_from([(0,), (1,), (7,), (8,), (9,), (), (0, 5), (3, 0, 2)]),
            st.tuples(st.integers(0, 70), st.integers(0, 70)),
            st.tuples(st.integers(1, 17), st.integers(1, 17), st.integers(1, 17)),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["bernoulli"] * 6 + ["empty", "full", "first", "last", "all-but-one", "prefix"]))
    numel = math.prod(shape)
    flat = np.zeros(numel, dtype=bool)
    if kind == "bernoulli":
        flat = rng.random(numel) < 10 ** draw(st.floats(-4, 0))
    elif kind == "full":
        flat[:] = True
    elif kind == "first" and numel:
        flat[0] = True
    elif kind == "last" and numel:
        flat[-1] = True
    elif kind == "all-but-one" and numel:
        flat[:] = True
        flat[rng.integers(numel)] = False
    elif kind == "prefix":
        flat[: draw(st.integers(0, numel))] = True
    return flat.reshape(shape)


def _brute_rice_len(positions: np.ndarray) -> int:
    gaps = _ref_gaps(positions.tolist())
    return len(_ref_rice(positions.tolist(), _ref_best_k(gaps)))


# ---------------------------------------------------------------------------------- round trips


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks(), encoding=st.sampled_from([U8, RICE, "auto"]), as_torch=st.booleans())
def test_roundtrip_mask_and_indices(mask: np.ndarray, encoding: str, as_torch: bool) -> None:
    flat = mask.reshape(-1)
    numel = flat.size
    positions = np.flatnonzero(flat)
    enc, payload, params = encode_mask(torch.from_numpy(mask) if as_torch else mask, encoding)
    assert isinstance(payload, bytes)
    assert params["nnz"] == positions.size and params["numel"] == numel
    # the same bytes from the kept indices (numpy or torch) and from the independent reference
    assert encode_indices(positions, numel, encoding) == (enc, payload, params)
    assert encode_indices(torch.from_numpy(positions), numel, encoding) == (enc, payload, params)
    u8_ref = _ref_u8(mask)
    gaps = _ref_gaps(positions.tolist())
    rice_ref = _ref_rice(positions.tolist(), _ref_best_k(gaps))
    if enc == RICE:
        assert payload == rice_ref
        assert params["k"] == _ref_best_k(gaps) == payload[0]
    else:
        assert payload == u8_ref and "k" not in params
    if encoding == "auto":  # the smaller one, U8 on ties
        assert enc == (RICE if len(rice_ref) < len(u8_ref) else U8)
    else:
        assert enc == encoding
    # decoding, with and without the params, is bit-identical
    for p in (None, params):
        out = decode_mask(enc, payload, numel, p)
        assert out.dtype == np.bool_ and out.shape == (numel,)
        np.testing.assert_array_equal(out, flat)
        idx = decode_indices(enc, payload, numel, p)
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(idx, positions)


@settings(max_examples=80, deadline=None)
@given(mask=masks(), k=st.integers(0, MAX_K))
def test_any_k_roundtrips(mask: np.ndarray, k: int) -> None:
    """Decoders accept every k (other encoders may choose differently); forced k matches the reference."""
    flat = mask.reshape(-1)
    positions = np.flatnonzero(flat)
    enc, payload, params = encode_mask(mask, RICE, k=k)
    assert payload == _ref_rice(positions.tolist(), k if positions.size else 0)
    assert encode_indices(positions, flat.size, RICE, k=k)[1] == payload
    np.testing.assert_array_equal(decode_indices(RICE, payload, flat.size, params), positions)
    np.testing.assert_array_equal(decode_mask(RICE, payload, flat.size), flat)


def test_chosen_k_is_optimal_in_bits() -> None:
    rng = np.random.default_rng(1)
    for numel, p in [(5000, 0.3), (5000, 0.05), (4096, 0.002), (300, 0.9), (100, 0.5)]:
        positions = np.flatnonzero(rng.random(numel) < p)
        gaps = codecs._gaps(positions)
        k, bits = codecs._optimal_k(gaps, numel)
        assert k == _ref_best_k(gaps.tolist())
        assert bits == _ref_rice_bits(gaps.tolist(), k)


def test_pack_bits_matches_numpy_little_endian() -> None:
    m = np.random.default_rng(2).random((3, 11)) < 0.5
    assert pack_bits(m) == np.packbits(m.reshape(-1), bitorder="little").tobytes() == _ref_u8(m)
    assert pack_bits(torch.from_numpy(m)) == pack_bits(m)
    np.testing.assert_array_equal(unpack_bits(pack_bits(m), m.size), m.reshape(-1))


def test_compact_mask_kept_encodes_like_the_bool_mask() -> None:
    mask = torch.rand(64, 100, generator=torch.Generator().manual_seed(0)) < 0.01
    cm = CompactMask.from_bool(mask.clone())
    assert cm.kept is not None
    assert encode_indices(cm.kept, cm.numel) == encode_mask(cm.bool())
    enc, payload, params = encode_indices(cm.kept, cm.numel)
    assert enc == RICE
    assert torch.equal(torch.from_numpy(decode_indices(enc, payload, cm.numel, params)), cm.kept)


# ---------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("density", [0.1, 0.01, 0.001])
def test_rice_within_2_percent_of_entropy_bound(density: float) -> None:
    mask = np.random.default_rng(12345).random(1_000_000) < density
    enc, payload, params = encode_mask(mask)
    bound = entropy_bound_bytes(mask.size, params["nnz"])
    assert enc == RICE
    assert 1.0 < len(payload) / bound <= 1.02
    assert len(payload) < len(encode_mask(mask, U8)[1])


def test_u8_chosen_at_half_density() -> None:
    mask = np.random.default_rng(12345).random(1_000_000) < 0.5
    enc, payload, params = encode_mask(mask)
    assert enc == U8 and len(payload) == 125_000
    assert len(payload) / entropy_bound_bytes(mask.size, params["nnz"]) <= 1.0001
    assert len(encode_mask(mask, RICE)[1]) > len(payload)


def test_entropy_bound() -> None:
    assert entropy_bound_bytes(0, 0) == 0.0
    assert entropy_bound_bytes(10, 0) == entropy_bound_bytes(10, 10) == 0.0
    assert entropy_bound_bytes(16, 8) == 2.0
    p = 0.01
    assert entropy_bound_bytes(10**6, 10**4) == pytest.approx(
        10**6 * (-p * math.log2(p) - (1 - p) * math.log2(1 - p)) / 8
    )
    with pytest.raises(ValueError):
        entropy_bound_bytes(5, 6)


# ---------------------------------------------------------------------------------- golden bytes

_M20 = np.zeros(20, dtype=bool)
_M20[[1, 4, 5, 13, 19]] = True


def _one_hot(numel: int, *positions: int) -> np.ndarray:
    m = np.zeros(numel, dtype=bool)
    m[list(positions)] = True
    return m


GOLDEN = [
    # (mask, encoding, forced k, payload hex, params)
    (_M20, U8, None, "322008", {"nnz": 5, "numel": 20}),
    # gaps 1 2 0 7 5: k=1 needs 16 stream bits (k=0: 20, k=2: 17); remainders 1 0 0 1 1 -> 0x19,
    # quotients 0 1 0 3 2 -> unary 0 10 0 1110 110 -> 0x72 0x03
    (_M20, RICE, None, "0105197203", {"k": 1, "nnz": 5, "numel": 20}),
    (_M20, "auto", None, "322008", {"nnz": 5, "numel": 20}),
    # k = 0: the quotient stream is the complement of the mask up to its last kept element
    (_M20, RICE, 0, "0005cddf07", {"k": 0, "nnz": 5, "numel": 20}),
    (np.zeros(0, dtype=bool), U8, None, "", {"nnz": 0, "numel": 0}),
    (np.zeros(0, dtype=bool), RICE, None, "0000", {"k": 0, "nnz": 0, "numel": 0}),
    (np.zeros(0, dtype=bool), "auto", None, "", {"nnz": 0, "numel": 0}),
    (np.zeros(1, dtype=bool), RICE, 7, "0000", {"k": 0, "nnz": 0, "numel": 1}),
    (np.ones(1, dtype=bool), U8, None, "01", {"nnz": 1, "numel": 1}),
    (np.ones(1, dtype=bool), RICE, None, "000100", {"k": 0, "nnz": 1, "numel": 1}),
    # one kept element at 999 of 1000: k = 9 and k = 10 both need 11 bits, the smaller k wins;
    # remainder 999 & 511 = 487 = 0x01e7 in 9 bits, quotient 1 -> "10"
    (_one_hot(1000, 999), "auto", None, "0901e70101", {"k": 9, "nnz": 1, "numel": 1000}),
    # nnz = 300 takes two ULEB128 bytes (0xac 0x02); 300 zero bits = 38 zero bytes
    (np.ones(300, dtype=bool), RICE, None, "00ac02" + "00" * 38, {"k": 0, "nnz": 300, "numel": 300}),
    (np.ones(300, dtype=bool), "auto", None, "ff" * 37 + "0f", {"nnz": 300, "numel": 300}),
    # k = 62: one 62-bit remainder field (8 bytes), then the quotient stream "0" (1 byte)
    (np.ones(1, dtype=bool), RICE, 62, "3e01" + "00" * 8 + "00", {"k": 62, "nnz": 1, "numel": 1}),
]


@pytest.mark.parametrize("mask,encoding,k,hexpayload,params", GOLDEN)
def test_golden_bytes(mask: np.ndarray, encoding: str, k: int | None, hexpayload: str, params: dict) -> None:
    enc, payload, got_params = encode_mask(mask, encoding, k=k)
    assert payload.hex() == hexpayload
    assert got_params == params
    assert enc == (RICE if "k" in params else U8)
    np.testing.assert_array_equal(decode_mask(enc, bytes.fromhex(hexpayload), mask.size, params), mask)


def test_huge_numel_positions_near_2_63() -> None:
    """Gaps close to 2**63 and k = 62 (the uint64 summation path) without building a mask."""
    numel = 2**63 - 1
    positions = np.array([0, 1, 2**62 + 5, 2**63 - 2], dtype=np.int64)
    for k in (None, 61, 62):  # (a small k would write ~2**62 unary bits)
        enc, payload, params = encode_indices(positions, numel, RICE, k=k)
        assert payload == _ref_rice(positions.tolist(), params["k"])
        np.testing.assert_array_equal(decode_indices(RICE, payload, numel, params), positions)
    # remainders summing past numel through the guarded path are rejected, not wrapped around
    for nnz, numel2 in [(2, numel), (3, numel), (4, numel), (2, 2**62)]:
        rem = sum(((1 << 62) - 1) << (62 * j) for j in range(nnz)).to_bytes((62 * nnz + 7) // 8, "little")
        payload = bytes([62]) + _ref_uleb128(nnz) + rem + b"\x00" * ((nnz + 7) // 8)
        with pytest.raises(TicketError):
            decode_indices(RICE, payload, numel2)


# ---------------------------------------------------------------------------------- hostile input


INVALID = [
    # (encoding, payload hex, numel, what)
    ("U8", "", 1, "too short"),
    ("U8", "000000", 9, "trailing byte"),
    ("U8", "0002", 9, "padding bit set"),
    ("U8", "80", 7, "padding bit set"),
    ("RICE", "", 5, "empty"),
    ("RICE", "00", 5, "no nnz"),
    ("RICE", "3f0100", 5, "k = 63"),
    ("RICE", "ff0100", 5, "k = 255"),
    ("RICE", "3f01" + "00" * 8 + "00", 5, "k = 63 with streams of the right length"),
    ("RICE", "0000" + "00", 5, "trailing byte after empty mask"),
    ("RICE", "0100", 5, "empty mask with k != 0"),
    ("RICE", "000600", 5, "nnz > numel"),
    ("RICE", "0080", 5, "nnz field truncated"),
    ("RICE", "008000", 5, "nnz field not minimal"),
    ("RICE", "0081000000", 5, "nnz field not minimal"),
    ("RICE", "00" + "ff" * 9 + "01", 5, "nnz field too long"),
    ("RICE", "0002", 5, "streams missing"),
    ("RICE", "0003fe", 5, "fewer zero bits than symbols"),
    ("RICE", "00020000", 5, "extra zero byte after the quotient stream"),
    ("RICE", "0001fe", 5, "padding after the last symbol not zero"),
    ("RICE", "000100ff", 5, "one bits after the last symbol"),
    ("RICE", "00013f", 5, "position 6 >= numel 5"),
    ("RICE", "020103", 5, "k = 2, no room for remainder and quotient"),
    ("RICE", "02010401", 5, "remainder padding bits set"),
    ("RICE", "02010301", 5, "position = (1 << 2) + 3 = 7 >= 5"),
    ("RICE", "3e01" + "00" * 8, 5, "k = 62: quotient stream missing"),
    ("RICE", "3e01" + "00" * 8 + "01", 5, "k = 62, q = 1: position 2**62 >= numel"),
    ("RICE", "3e01" + "00" * 8 + "02", 5, "k = 62: padding bit set"),
    ("RICE", "0001" + "ff" * 100 + "00", 5, "huge quotient"),
    ("bogus", "", 0, "unknown encoding"),
]


@pytest.mark.parametrize("encoding,hexpayload,numel,what", INVALID)
def test_invalid_payloads_raise_ticket_error(encoding: str, hexpayload: str, numel: int, what: str) -> None:
    payload = bytes.fromhex(hexpayload)
    for decode in (decode_mask, decode_indices):
        with pytest.raises(TicketError):
            decode(encoding, payload, numel)


def test_rice_zero_padding_bits_are_not_symbols() -> None:
    # the zero bits after the nnz-th one are padding: the same byte holds 1, 2 or 3 symbols
    for nnz in (1, 2, 3):
        payload = bytes([0, nnz, 0])
        np.testing.assert_array_equal(decode_indices(RICE, payload, 5), np.arange(nnz))
        assert encode_indices(np.arange(nnz), 5, RICE, k=0)[1] == payload
    with pytest.raises(TicketError):  # but not a whole byte of them
        decode_indices(RICE, bytes([0, 1, 0, 0]), 5)


def test_bad_numel_params_and_inputs() -> None:
    enc, payload, params = encode_mask(_M20, RICE)
    for numel in (-1, 2**63, 1.5, "20", None):
        with pytest.raises(TicketError):
            decode_mask(enc, payload, numel)  # type: ignore[arg-type]
    for bad in ({"k": 2}, {"nnz": 4}, {"numel": 21}, {"k": "1"}, {"nnz": True}, {"k": 1.0}, [("k", 1)]):
        with pytest.raises(TicketError):
            decode_indices(enc, payload, 20, bad)  # type: ignore[arg-type]
    with pytest.raises(TicketError):
        decode_mask(U8, pack_bits(_M20), 20, {"nnz": 6})
    decode_mask(enc, payload, 20, {"k": 1, "nnz": 5, "numel": 20, "other": "ignored"})
    with pytest.raises(TicketError):
        encode_mask(_M20, "rice")
    with pytest.raises(TicketError):
        encode_mask(_M20, RICE, k=63)
    with pytest.raises(TicketError):
        encode_indices([3, 2], 5)
    with pytest.raises(TicketError):
        encode_indices([1, 1], 5)
    with pytest.raises(TicketError):
        encode_indices([0, 5], 5)
    with pytest.raises(TicketError):
        encode_indices([-1, 2], 5)
    with pytest.raises(TypeError):
        encode_mask(np.zeros(4, dtype=np.uint8))
    with pytest.raises(TypeError):
        encode_mask(torch.zeros(4))
    with pytest.raises(TypeError):
        encode_indices(np.array([0.0, 1.0]), 5)
    with pytest.raises(TypeError):
        decode_mask(U8, "00", 2)
    with pytest.raises(TypeError):
        decode_mask(U8, np.zeros(3, dtype=np.int64), 2)
    # payloads as uint8 arrays / tensors (e.g. the tensor of a safetensors file) decode the same
    as_tensor = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    np.testing.assert_array_equal(decode_mask(enc, as_tensor, 20), _M20)
    np.testing.assert_array_equal(decode_indices(enc, as_tensor.numpy(), 20), np.flatnonzero(_M20))
    assert issubclass(TicketError, SparsekitError) and issubclass(TicketError, ValueError)


def test_no_absurd_allocation_for_tiny_payloads() -> None:
    """Lengths are checked against the payload before anything of size nnz or numel is allocated."""
    big = 2**62
    with pytest.raises(TicketError):
        decode_mask(U8, b"\x00", big)
    with pytest.raises(TicketError):  # nnz = 2**62 declared in an 11-byte payload
        decode_indices(RICE, bytes([0]) + _ref_uleb128(big) + b"\x00\x00", big)
    with pytest.raises(TicketError):  # k = 62 with many entries: remainder stream would be huge
        decode_indices(RICE, bytes([62]) + _ref_uleb128(10**12) + b"\x00", big)
    # a valid tiny RICE payload of a huge mask decodes to indices without building the mask
    np.testing.assert_array_equal(decode_indices(RICE, _ref_rice([big - 1], 61), big), [big - 1])


# ---------------------------------------------------------------------------------- fuzz

_FUZZ_BASES: list[tuple[str, bytes, int]] = []
for _numel, _density, _k in [
    (0, 0.0, None),
    (1, 1.0, None),
    (7, 0.5, None),
    (8, 1.0, None),
    (20, 0.25, None),
    (20, 0.25, 0),
    (64, 0.1, 3),
    (100, 0.05, None),
    (257, 0.02, None),
    (257, 0.02, 62),
    (300, 0.9, None),
    (1000, 0.003, None),
]:
    _m = np.random.default_rng(_numel).random(_numel) < _density
    _FUZZ_BASES.append((U8, encode_mask(_m, U8)[1], _numel))
    _FUZZ_BASES.append((RICE, encode_mask(_m, RICE, k=_k)[1], _numel))


@st.composite
def mutated_payloads(draw: st.DrawFn) -> tuple[str, bytes, int]:
    encoding, payload, numel = draw(st.sampled_from(_FUZZ_BASES))
    data = bytearray(payload)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete", "k", "numel"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=12))
        elif op == "insert":
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
        elif op == "delete" and data:
            del data[draw(st.integers(0, len(data) - 1))]
        elif op == "k" and data:
            data[0] = draw(st.sampled_from([0, 1, 2, 5, 9, 61, 62, 63, 128, 255]))
        elif op == "numel":
            numel = max(0, numel + draw(st.integers(-9, 9)))
    return encoding, bytes(data), numel


@settings(max_examples=600, deadline=None)
@given(case=mutated_payloads())
def test_fuzz_only_ticket_errors_or_canonical_masks(case: tuple[str, bytes, int]) -> None:
    """Corrupted payloads raise TicketError, or are exactly the encoding of the mask they decode to."""
    encoding, payload, numel = case
    try:
        mask = decode_mask(encoding, payload, numel)
    except TicketError:
        with pytest.raises(TicketError):
            decode_indices(encoding, payload, numel)
        return
    idx = decode_indices(encoding, payload, numel)
    assert mask.dtype == np.bool_ and mask.shape == (numel,)
    np.testing.assert_array_equal(np.flatnonzero(mask), idx)
    # the decoders accept exactly one payload per (mask, k): re-encoding gives the same bytes
    if encoding == U8:
        assert pack_bits(mask) == payload
    else:
        assert encode_indices(idx, numel, RICE, k=payload[0])[1] == payload == _ref_rice(idx.tolist(), payload[0])
