"""The counter RNG against the spec's golden vectors and an independent reference."""

from __future__ import annotations

import json

import _reference_rng as ref
import pytest
import torch
from conftest import ROOT, cuda
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsekit import rng
from sparsekit.sampling import draw_mask

GOLD = json.loads((ROOT / "formats/vectors/rng-v1.json").read_text())


def unpack(hexstr: str, n: int) -> list[bool]:
    data = bytes.fromhex(hexstr)
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(n)]


def test_mix64_and_threshold_golden():
    for z, out in GOLD["mix64"].items():
        assert rng.mix64(int(z, 16)) == int(out, 16)
    for p, t in GOLD["threshold"].items():
        assert rng.threshold(float(p)) == t


def test_splitmix64_published_outputs():
    # splitmix64 seeded with 0: the first outputs are mix64(GAMMA), mix64(2*GAMMA)
    assert rng.mix64(rng.GAMMA) == 0xE220A8397B1DCDAF
    assert rng.mix64(2 * rng.GAMMA) == 0x6E789E6AA1B965F4


@pytest.mark.parametrize("case", GOLD["cases"], ids=lambda c: f"{c['seed']}-{c['fqn']}-{c['purpose']}")
def test_golden_vectors_torch(case):
    k = rng.stream_key(int(case["seed"]), case["fqn"], case["purpose"])
    assert f"{k:016x}" == case["key"]
    assert f"{rng.name_hash(case['purpose'] + chr(0) + case['fqn']):016x}" == case["name_hash"]
    w = rng.words(k, 0, 8)
    assert [f"{x & rng.M64:016x}" for x in w.tolist()] == case["words"]
    assert rng.lanes_at(k, torch.arange(16)).tolist() == case["lanes"]
    for p, hexbits in case["bernoulli"].items():
        for chunk in (1, 3, 64, 1 << 18):
            got = rng.bernoulli_flat(k, 257, float(p), chunk_words=chunk).tolist()
            assert got == unpack(hexbits, 257), (p, chunk)
    for p, hexbits in case["exact"].items():
        got = draw_mask(case["fqn"], (257,), float(p), int(case["seed"]), exact=True).tolist()
        if case["purpose"] == "mask":
            assert got == unpack(hexbits, 257)
    counters = torch.tensor([0, 1, 2, 3])
    ns = torch.tensor([3, 9, 1000, 2**31 - 1])
    assert rng.choice_at(k, counters, ns).tolist() == case["choice"]


@pytest.mark.parametrize("case", GOLD["cases"][:2], ids=["a", "b"])
def test_golden_vectors_reference(case):
    """The independent reference agrees with the golden file too (so the file is the spec's)."""
    k = ref.key(int(case["seed"]), case["fqn"], case["purpose"])
    assert f"{k:016x}" == case["key"]
    assert [ref.lane(k, i) for i in range(16)] == case["lanes"]
    for p, hexbits in case["bernoulli"].items():
        assert ref.bernoulli(k, 257, float(p)) == unpack(hexbits, 257)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), fqn=st.text(min_size=1, max_size=20), n=st.integers(1, 300),
       p=st.floats(0.0, 1.0), chunk=st.integers(1, 70))
def test_bernoulli_matches_reference(seed, fqn, n, p, chunk):
    k = rng.stream_key(seed, fqn, "mask")
    assert k == ref.key(seed, fqn, "mask")
    assert rng.bernoulli_flat(k, n, p, chunk_words=chunk).tolist() == ref.bernoulli(k, n, p)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 200), p=st.floats(0.0, 1.0))
def test_exact_matches_reference(seed, n, p):
    k = ref.key(seed, "w", "mask")
    got = draw_mask("w", (n,), p, seed, exact=True, chunk_words=7).tolist()
    assert got == ref.exact(k, n, p)
    assert sum(got) == min(n, max(0, round(p * n)))


def test_threads_and_chunks_do_not_matter():
    k = rng.stream_key(7, "big.weight", "mask")
    n = 3_000_001
    base = rng.bernoulli_flat(k, n, 0.013)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for chunk in (1 << 10, 12345, 1 << 20):
                assert torch.equal(rng.bernoulli_flat(k, n, 0.013, chunk_words=chunk), base)
    finally:
        torch.set_num_threads(old)
    assert abs(base.float().mean().item() - 0.013) < 5 * (0.013 * 0.987 / n) ** 0.5


def test_seed_and_name_change_the_stream():
    a = rng.bernoulli_flat(rng.stream_key(0, "w", "mask"), 10_000, 0.5)
    b = rng.bernoulli_flat(rng.stream_key(1, "w", "mask"), 10_000, 0.5)
    c = rng.bernoulli_flat(rng.stream_key(0, "v", "mask"), 10_000, 0.5)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    # independent streams agree on about half the entries
    assert 0.45 < (a == b).float().mean().item() < 0.55


def test_global_torch_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    draw_mask("x.weight", (100, 100), 0.1, 5)
    draw_mask("x.weight", (100, 100), 0.1, 5, exact=True)
    assert torch.equal(state, torch.get_rng_state())


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        rng.stream_key(-1, "w", "mask")
    with pytest.raises(ValueError, match="seed"):
        rng.stream_key(2**64, "w", "mask")


def test_lane_statistics_uniform():
    lanes = rng.lanes_at(rng.stream_key(3, "w", "mask"), torch.arange(1 << 20)).double()
    u = (lanes + 2**31) / 2**32
    assert abs(u.mean().item() - 0.5) < 0.002
    hist = torch.histc(u, bins=16, min=0, max=1)
    expected = (1 << 20) / 16
    chi2 = ((hist - expected) ** 2 / expected).sum().item()
    assert chi2 < 45  # 15 dof; p ~ 1e-4


@cuda
def test_cuda_matches_cpu():
    k = rng.stream_key(11, "gpu.weight", "mask")
    cpu = rng.bernoulli_flat(k, 1_000_003, 0.07)
    gpu = rng.bernoulli_flat(k, 1_000_003, 0.07, device="cuda").cpu()
    assert torch.equal(cpu, gpu)
    a = draw_mask("g.weight", (300, 301), 0.05, 3, exact=True)
    b = draw_mask("g.weight", (300, 301), 0.05, 3, exact=True, device="cuda").cpu()
    assert torch.equal(a, b)


def test_concurrent_threads_get_identical_masks():
    from concurrent.futures import ThreadPoolExecutor

    ref = draw_mask("t.weight", (700, 900), 0.03, 9, chunk_words=1000)
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: draw_mask("t.weight", (700, 900), 0.03, 9, chunk_words=1000), range(8)))
    assert all(torch.equal(o, ref) for o in outs)
