"""Structured ER masks (block, constant fan-in, N:M): spec vectors, properties, tickets, CLI, training."""

from __future__ import annotations

import json
import math

import _reference_structures as ref
import pytest
import torch
from cli_helpers import error_line, run
from conftest import ROOT, cuda
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
import sparsekit.formats.ticket_file as tf
from sparsekit.errors import SparsekitError
from sparsekit.formats.errors import TicketError
from sparsekit.layers import Layer, LayerLayout, find_layers
from sparsekit.structures import (
    Structure,
    draw_structured,
    from_matrix_view,
    matrix_view,
    nm_layer_densities,
    parse_structure,
)

GOLD = json.loads((ROOT / "formats/vectors/structures-v1.json").read_text())


def unpack(hexstr: str, n: int) -> list[bool]:
    data = bytes.fromhex(hexstr)
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(n)]


def layer_of(fqn: str, shape: tuple[int, ...], layout: LayerLayout = LayerLayout()) -> Layer:
    return Layer(fqn, fqn.rpartition(".")[0], "", tuple(shape), layout, torch.empty(0))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 80), nn.ReLU(), nn.Linear(80, 10))


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, groups=2), nn.Flatten(),
                         nn.Linear(32 * 16, 64), nn.Linear(64, 10))


# --------------------------------------------------------------------------------------------------
# spec: golden vectors from the independent reference


@pytest.mark.parametrize("case", GOLD["cases"], ids=lambda c: f"{c['structure']}-{c['fqn']}-{c['flow']}")
def test_golden_vectors(case):
    shape = tuple(case["shape"])
    n = math.prod(shape)
    layer = layer_of(case["fqn"], shape, LayerLayout(*case["layout"]))
    mask, rep = draw_structured(layer, case["density"], int(case["seed"]), parse_structure(case["structure"]),
                                case["flow"], chunk_words=3)
    assert mask.reshape(-1).tolist() == unpack(case["mask"], n)
    assert int(mask.sum()) == case["nonzeros"]
    assert {"edges_added": rep.edges_added, "rows_repaired": rep.rows_repaired,
            "cols_repaired": rep.cols_repaired, "fallbacks": rep.fallbacks} == case["repair"]


@pytest.mark.parametrize("case", GOLD["cases"][:4] + GOLD["cases"][5:7] + GOLD["cases"][10:12],
                         ids=lambda c: f"{c['structure']}-{c['fqn']}")
def test_reference_reproduces_golden_vectors(case):
    shape, seed, g = tuple(case["shape"]), int(case["seed"]), case["layout"][2]
    s = case["structure"]
    if s.startswith("block:"):
        bh, bw = (int(x) for x in s[6:].split("x"))
        mask, _ = ref.block(seed, case["fqn"], shape, case["density"], bh, bw, g)
    elif s == "fanin":
        mask, _ = ref.fanin(seed, case["fqn"], shape, case["density"], g)
    else:
        mask, _ = ref.nm(seed, case["fqn"], shape, 2, 4, g)
    assert mask == unpack(case["mask"], math.prod(shape))


def test_golden_vectors_cover_every_structure_and_repair():
    kinds = {parse_structure(c["structure"]).kind for c in GOLD["cases"]}
    assert kinds == {"block", "fanin", "nm"}
    assert any(c["repair"]["fallbacks"] for c in GOLD["cases"] if c["structure"] == "fanin")
    assert any(c["repair"]["cols_repaired"] > c["repair"]["fallbacks"] for c in GOLD["cases"]
               if c["structure"] == "fanin")  # swaps


# --------------------------------------------------------------------------------------------------
# parsing and the matrix view


@pytest.mark.parametrize("value, text", [
    (None, "element"), ("element", "element"), ("block4x4", "block:4x4"), ("block:16x16", "block:16x16"),
    (("block", (1, 4)), "block:1x4"), (("block", 8), "block:8x8"), ("fanin", "fanin"),
    ("constant-fanin", "fanin"), ("nm2:4", "nm:2:4"), ("2:4", "nm:2:4"), ("er-nm", "nm:2:4"),
    (("nm", (1, 8)), "nm:1:8"), (Structure("fanin"), "fanin")])
def test_parse_structure(value, text):
    assert str(parse_structure(value)) == text
    assert parse_structure(str(parse_structure(value))) == parse_structure(value)


@pytest.mark.parametrize("bad", ["blocks", "block0x4", "nm4:4", "nm0:4", "dense", ("block", (4,)), 3.5])
def test_parse_structure_rejects(bad):
    with pytest.raises((ValueError, TypeError), match="structure|block|N:M"):
        parse_structure(bad)


@pytest.mark.parametrize("shape, layout", [
    ((6, 5), LayerLayout()), ((8, 3, 3, 2), LayerLayout(0, 1, 2)), ((4, 6, 3), LayerLayout(1, 0, 2)),
    ((3, 5, 4), LayerLayout(1, 2, 1, 0)), ((5, 7), LayerLayout(1, 0))])
def test_matrix_view_round_trip(shape, layout):
    layer = layer_of("w.weight", shape, layout)
    t = torch.arange(math.prod(shape)).reshape(shape)
    mv = matrix_view(layer, t)
    G, R, C, K = layer.grid()
    assert mv.shape == (G, R, C * K)
    assert torch.equal(from_matrix_view(layer, mv), t)


def test_matrix_view_is_the_gemm_matrix_of_a_conv():
    conv = nn.Conv2d(4, 6, 3)
    (L,) = find_layers(conv)
    t = torch.arange(conv.weight.numel()).reshape(conv.weight.shape)
    assert torch.equal(matrix_view(L, t)[0], t.reshape(6, -1))


# --------------------------------------------------------------------------------------------------
# properties: bit-exact regeneration, densities, flow, exact structure

shapes = st.tuples(st.integers(1, 40), st.integers(1, 60))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, p=st.floats(0.01, 0.9), bh=st.integers(1, 9), bw=st.integers(1, 9),
       seed=st.integers(0, 2**64 - 1), flow=st.sampled_from(["repair", None]))
def test_block_regenerates_and_covers_blocks(shape, p, bh, bw, seed, flow):
    layer = layer_of("h.weight", shape)
    s = Structure("block", (bh, bw))
    a, rep = draw_structured(layer, p, seed, s, flow)
    b, _ = draw_structured(layer, p, seed, s, flow, chunk_words=1)
    assert torch.equal(a, b)
    R, CK = shape
    blocks = torch.zeros(-(-R // bh), -(-CK // bw), dtype=torch.bool)
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            tile = a[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw]
            assert bool(tile.all()) or not bool(tile.any())  # whole blocks only
            blocks[i, j] = bool(tile.any())
    if flow is not None:
        assert bool(blocks.any(1).all()) and bool(blocks.any(0).all())  # flow at block level
        assert bool(a.any(1).all()) and bool(a.any(0).all())  # hence at element level
    else:
        assert rep.edges_added == 0


@settings(max_examples=25, deadline=None)
@given(shape=shapes, p=st.floats(0.01, 0.9), seed=st.integers(0, 2**64 - 1))
def test_fanin_is_constant_per_row(shape, p, seed):
    layer = layer_of("f.weight", shape)
    mask, rep = draw_structured(layer, p, seed, Structure("fanin"), "repair")
    assert torch.equal(mask, draw_structured(layer, p, seed, Structure("fanin"), "repair", chunk_words=2)[0])
    k = max(1, round(p * shape[1]))
    per_row = mask.sum(1)
    if rep.fallbacks == 0:
        assert bool((per_row == k).all())
    assert int(per_row.sum()) == shape[0] * k + rep.fallbacks
    assert bool(mask.any(0).all())  # every input column alive after repair
    no_flow, _ = draw_structured(layer, p, seed, Structure("fanin"), None)
    assert bool((no_flow.sum(1) == k).all())


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**64 - 1), nm=st.sampled_from([(2, 4), (1, 4), (4, 8)]))
def test_nm_pattern_is_exact(shape, seed, nm):
    n, m = nm
    layer = layer_of("n.weight", shape)
    mask, rep = draw_structured(layer, n / m, seed, Structure("nm", n=n, m=m), None)
    R, CK = shape
    for start in range(0, CK, m):
        width = min(m, CK - start)
        assert bool((mask[:, start:start + width].sum(1) == min(n, width)).all())
    repaired, rep = draw_structured(layer, n / m, seed, Structure("nm", n=n, m=m), "repair")
    if rep.fallbacks == 0:  # swaps keep the pattern
        for start in range(0, CK, m):
            width = min(m, CK - start)
            assert bool((repaired[:, start:start + width].sum(1) == min(n, width)).all())
    assert bool(repaired.any(0).all())


def test_block_density_within_binomial_tolerance():
    layer = layer_of("d.weight", (512, 512))
    for (bh, bw), p in [((1, 4), 0.05), ((4, 4), 0.1), ((16, 16), 0.1), ((4, 4), 0.01)]:
        nb = (512 // bh) * (512 // bw)
        kept = [int(draw_structured(layer, p, s, Structure("block", (bh, bw)), None)[0].sum()) // (bh * bw)
                for s in range(3)]
        sd = math.sqrt(nb * p * (1 - p))
        assert all(abs(k - nb * p) <= 5 * sd for k in kept), (bh, bw, p, kept)


def test_block_density_with_edge_blocks_is_unbiased():
    layer = layer_of("e.weight", (37, 53))  # 4x4 blocks: edge blocks of 1 row / 1 column
    p = 0.3
    total = sum(int(draw_structured(layer, p, s, Structure("block", (4, 4)), None)[0].sum()) for s in range(40))
    mean = total / (40 * 37 * 53)
    assert abs(mean - p) < 0.03


def test_fanin_conv_counts_kernel_elements():
    conv = nn.Conv2d(8, 16, 3)
    t = sparsekit.prune(conv, "er-uniform", 0.1, structure="fanin")
    mask = t.masks["weight"].reshape(16, -1)
    assert bool((mask.sum(1) == round(0.1 * 72)).all())


@cuda
def test_cuda_masks_match_cpu():
    for s, p in [("block:4x4", 0.05), ("fanin", 0.02), ("nm:2:4", 0.5)]:
        layer = layer_of("g.weight", (300, 301))
        a, _ = draw_structured(layer, p, 3, parse_structure(s), "repair")
        b, _ = draw_structured(layer, p, 3, parse_structure(s), "repair", device="cuda")
        assert torch.equal(a, b.cpu()), s


@pytest.mark.filterwarnings("ignore:.*no longer exactly fanin")
@pytest.mark.parametrize("structure", ["block:4x4", "fanin", "nm:2:4"])
def test_meta_model_gives_the_same_masks(structure):
    density = 0.6 if structure.startswith("nm") else 0.05
    real = sparsekit.prune(convnet(), "er-balanced", density, seed=5, structure=structure)
    with torch.device("meta"):
        meta_model = convnet()
    with pytest.warns(UserWarning, match="meta"):
        meta = sparsekit.prune(meta_model, "er-balanced", density, seed=5, structure=structure)
    assert real.masks == meta.masks
    assert meta.structure == structure


def test_element_default_is_unchanged():
    a = sparsekit.prune(mlp(), "er-balanced", 0.05, seed=1)
    b = sparsekit.prune(mlp(), "er-balanced", 0.05, seed=1, structure="element")
    assert a.masks == b.masks and a.structure == b.structure == "element"


# --------------------------------------------------------------------------------------------------
# prune: layerwise rules and errors


def test_nm_layer_rule():
    numels = {"a": 100, "b": 300, "c": 600}
    s = Structure("nm", n=2, m=4)
    assert nm_layer_densities(numels, {"a": 0.9, "b": 0.5, "c": 0.1}, 0.5, s) == {"a": 0.5, "b": 0.5, "c": 0.5}
    # 0.6 target: a (highest p_l) turns dense first (+0.05), b would overshoot (+0.15 -> 0.70), c too
    out = nm_layer_densities(numels, {"a": 0.9, "b": 0.5, "c": 0.1}, 0.6, s)
    assert out == {"a": 1.0, "b": 0.5, "c": 0.5}
    # a layer the scheme capped at 1 is a candidate like any other; only keep_dense layers must stay dense
    assert nm_layer_densities(numels, {"a": 1.0, "b": 0.5, "c": 0.1}, 0.7, s) == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert nm_layer_densities(numels, {"a": 0.1, "b": 1.0, "c": 1.0}, 0.5, s) == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert nm_layer_densities(numels, {"a": 0.1, "b": 1.0, "c": 1.0}, 0.6, s, {"a"}) == {"a": 1.0, "b": 0.5, "c": 0.5}
    with pytest.raises(ValueError, match="layers kept dense"):
        nm_layer_densities(numels, {"a": 0.1, "b": 0.1, "c": 1.0}, 0.6, s, {"c"})
    with pytest.raises(ValueError, match="cannot go below 0.5"):
        nm_layer_densities(numels, {"a": 0.1, "b": 0.1, "c": 0.1}, 0.1, s)


def test_prune_nm_meets_the_target_from_below():
    t = sparsekit.prune(mlp(), "er-balanced", 0.7, structure="nm2:4")
    assert t.structure == "nm:2:4"
    assert set(t.densities.values()) <= {0.5, 1.0}
    assert 0.5 <= t.realised_density <= 0.7
    with pytest.raises(ValueError, match="cannot go below 0.5"):
        sparsekit.prune(mlp(), "er-balanced", 0.01, structure="nm2:4")


@pytest.mark.parametrize("kwargs, match", [
    ({"exact": True}, "exact=True is defined for structure 'element' only"),
    ({"flow": "resample"}, "flow='resample' is defined for structure 'element' only"),
    ({"structure": "block4x"}, "unknown structure")])
def test_prune_rejects_undefined_combinations(kwargs, match):
    kwargs = {"structure": "fanin", **kwargs}
    model = mlp()
    with pytest.raises(ValueError, match=match):
        sparsekit.prune(model, "er-balanced", 0.1, **kwargs)
    assert not sparsekit.is_pruned(model)


def test_fanin_fallback_warns_and_counts():
    model = nn.Linear(200, 3)
    with pytest.warns(UserWarning, match="no longer exactly fanin"):
        t = sparsekit.prune(model, "er-uniform", 0.02, structure="fanin")
    rec = t.layers[0]
    assert rec.fallbacks > 0 and rec.edges_added == rec.fallbacks
    assert bool(t.masks["weight"].any(0).all())


# --------------------------------------------------------------------------------------------------
# tickets


@pytest.mark.filterwarnings("ignore:.*no longer exactly fanin")
@pytest.mark.parametrize("structure, density", [("block:4x4", 0.05), ("block:1x4", 0.1), ("fanin", 0.05),
                                                ("nm:2:4", 0.6)])
def test_ticket_round_trip(tmp_path, structure, density):
    model = convnet()
    t = sparsekit.prune(model, "er-balanced", density, seed=9, structure=structure)
    path = tmp_path / "t.safetensors"
    sparsekit.save_ticket(t, path)
    h = tf.read_ticket_metadata(path)
    assert h.meta["format_version"] == "2.0" and h.ticket["structure"] == structure
    assert len(path.read_bytes()) < 8192  # seed + densities, no mask bits
    loaded = sparsekit.load_ticket(path)
    assert loaded.structure == structure and loaded.masks == t.masks
    fresh = convnet()
    sparsekit.apply_ticket(fresh, path)
    assert sparsekit.ticket_of(fresh).masks == t.masks


def test_element_tickets_keep_format_1(tmp_path):
    t = sparsekit.prune(mlp(), "er-balanced", 0.05)
    sparsekit.save_ticket(t, tmp_path / "e.safetensors")
    h = tf.read_ticket_metadata(tmp_path / "e.safetensors")
    assert h.meta["format_version"] == "1.0" and "structure" not in h.ticket


def _rewrite(path, out, change_ticket=None, change_meta=None):
    table, meta, offset = tf._read_header(path)
    t = json.loads(meta["ticket"])
    if change_ticket:
        change_ticket(t)
    meta = dict(meta)
    if change_meta:
        change_meta(meta)
    meta["ticket"] = json.dumps(t, separators=(",", ":"), sort_keys=True)
    out.write_bytes(tf.serialize({}, meta))


@pytest.mark.parametrize("change_ticket, change_meta, match", [
    (lambda t: t.update(structure="block:8x8"), None, "nonzeros"),  # another valid structure: caught
    (lambda t: t.update(structure="fanin"), None, "nonzeros"),
    (lambda t: t.update(structure="hexagonal"), None, "unknown mask structure"),
    (lambda t: t.update(structure="block4x4"), None, "canonical"),
    (lambda t: t.update(structure=4), None, "must be a string"),
    (None, lambda m: m.update(format_version="1.1"), "needs ticket format 2.0"),
    (lambda t: t.update(exact=True), None, "not defined with exact"),
    (lambda t: t.update(seed="10"), None, "nonzeros"),
])
def test_tampered_structured_ticket_is_rejected(tmp_path, change_ticket, change_meta, match):
    t = sparsekit.prune(mlp(), "er-balanced", 0.05, seed=2, structure="block:4x4")
    sparsekit.save_ticket(t, tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    _rewrite(tmp_path / "good.safetensors", bad, change_ticket, change_meta)
    with pytest.raises(TicketError, match=match):
        sparsekit.load_ticket(bad)
    line = error_line(run("verify", bad, "sparsekit:mlp"), 1)
    assert bad.name in line


def test_nm_ticket_with_other_density_is_rejected(tmp_path):
    t = sparsekit.prune(mlp(), "er-balanced", 0.6, structure="nm:2:4")
    sparsekit.save_ticket(t, tmp_path / "nm.safetensors")
    _rewrite(tmp_path / "nm.safetensors", tmp_path / "bad.safetensors",
             lambda d: d["layers"][1].update(density=0.25))
    with pytest.raises(TicketError, match="only layers of density 0.5 or 1"):
        tf.read_ticket_metadata(tmp_path / "bad.safetensors")


@pytest.mark.filterwarnings("ignore:.*no longer exactly fanin")
def test_readers_of_format_1_reject_structured_files(tmp_path, monkeypatch):
    t = sparsekit.prune(mlp(), "er-balanced", 0.05, structure="fanin")
    sparsekit.save_ticket(t, tmp_path / "f.safetensors")
    monkeypatch.setattr(tf, "READ_MAJOR", 1)  # what a 1.x reader does with the file
    with pytest.raises(TicketError, match="uses ticket format 2.0, newer than this sparsekit.*upgrade"):
        sparsekit.load_ticket(tmp_path / "f.safetensors")


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_prune_structure(tmp_path):
    out = tmp_path / "s.safetensors"
    r = run("prune", "sparsekit:mlp", "-d", "0.05", "--structure", "block4x4", "-o", out)
    assert r.exit_code == 0, r.output
    assert "structure block:4x4" in r.output and "flow repair counts blocks" in r.output
    r = run("info", out)
    assert r.exit_code == 0 and "structure block:4x4" in r.output
    r = run("verify", out, "sparsekit:mlp")  # an unpruned model: pruned positions hold nonzeros
    assert r.exit_code == 1 and "Traceback" not in r.output
    pruned = tmp_path / "pruned.pt"
    assert run("prune", "sparsekit:mlp", "-d", "0.05", "--structure", "block4x4", "-o", pruned).exit_code == 0
    r = run("verify", out, pruned)
    assert r.exit_code == 0, r.output
    line = error_line(run("prune", "sparsekit:mlp", "--structure", "hexagonal"), 1)
    assert "--structure" in line and "block:HxW" in line
    line = error_line(run("prune", "sparsekit:mlp", "-d", "0.1", "--structure", "nm:2:4"), 1)
    assert "cannot go below 0.5" in line


# --------------------------------------------------------------------------------------------------
# training


def test_fit_weak_keeps_structure_and_rewire_refuses():
    from sparsekit.data import synthetic

    data = synthetic(64, shape=(64,), num_classes=10, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    t = sparsekit.prune(model, "er-balanced", 0.2, structure="fanin")
    sparsekit.fit_weak(model, data, epochs=1, batch_size=16, lr=0.05, progress=False, device="cpu")
    w = model[1].weight.detach()
    assert bool(((w != 0) <= t.masks["1.weight"]).all())
    assert bool(((w != 0).sum(1) == t.masks["1.weight"].sum(1)).all())
    with pytest.raises(SparsekitError, match="would break the ticket's fanin mask structure"):
        sparsekit.rewire(model, data, epochs=1, progress=False, device="cpu")


def test_checkpoints_keep_the_structure(tmp_path):
    from sparsekit.data import synthetic

    data = synthetic(32, shape=(64,), num_classes=10, seed=0)
    kw = dict(epochs=1, batch_size=16, device="cpu", progress=False, checkpoint_dir=tmp_path)
    model = mlp()
    t = sparsekit.prune(model, "er-erk", 0.2, seed=5, structure="block:1x4")
    sparsekit.fit_weak(model, data, **kw)
    fresh = mlp()  # unpruned: resume attaches the checkpoint's (format 2.0) ticket
    sparsekit.fit_weak(fresh, data, **kw, resume=True)
    assert sparsekit.ticket_of(fresh).structure == "block:1x4" and sparsekit.ticket_of(fresh).masks == t.masks
    other = mlp()
    sparsekit.prune(other, "er-erk", 0.2, seed=5)
    with pytest.raises(SparsekitError, match="structure: checkpoint 'block:1x4', now 'element'"):
        sparsekit.fit_weak(other, data, **kw, resume=True)


def test_structure_config_object():
    a = sparsekit.prune(mlp(), "er-erk", 0.1, seed=3, structure=sparsekit.Structure("block", (2, 8)))
    b = sparsekit.prune(mlp(), "er-erk", 0.1, seed=3, structure="block2x8")
    assert a.structure == "block:2x8" and a.masks == b.masks
    assert "structure='block:2x8'" in repr(a) and a.report().totals["structure"] == "block:2x8"
    with pytest.raises(ValueError, match="block must be two integers"):
        sparsekit.Structure("block", (0, 4))


def test_report_says_what_the_counters_count():
    t = sparsekit.prune(mlp(), "er-balanced", 0.02, structure="block:4x4")
    assert "flow repair counts blocks" in str(t.report())
    t = sparsekit.prune(mlp(), "er-balanced", 0.6, structure="nm:2:4")
    assert "moving an edge" in str(t.report())
    assert "structure" not in str(sparsekit.prune(mlp(), "er-balanced", 0.02).report())
