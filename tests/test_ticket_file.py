"""Ticket files: round trips, exact rebuild, weights, validation, atomic writes."""

from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import small_cnn, transformer
from torch import nn

import sparsekit
from sparsekit import TicketError


def roundtrip(tmp_path, ticket, **kw):
    path = sparsekit.save_ticket(ticket, tmp_path / "t.safetensors", **kw)
    return path, sparsekit.load_ticket(path)


@pytest.mark.parametrize("flow", ["repair", "resample", None])
@pytest.mark.parametrize("exact", [False, True])
def test_er_ticket_rebuilds_identical_masks(tmp_path, flow, exact):
    model = small_cnn()
    t = sparsekit.prune(model, "er-pyramidal", 0.02, seed=123, flow=flow, exact=exact)
    path, back = roundtrip(tmp_path, t)
    assert back.kind == "er" and back.seed == 123 and back.flow == flow and back.exact == exact
    assert back.masks.keys() == t.masks.keys()
    assert all(torch.equal(back.masks[k], t.masks[k]) for k in t.masks)
    assert [r.nonzeros for r in back.layers] == [r.nonzeros for r in t.layers]
    # no mask bits in an er ticket
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert set(header) == {"__metadata__"}


def test_er_ticket_is_small_for_a_big_model(tmp_path):
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vit_b_16()
    t = sparsekit.prune(model, "er-balanced", 0.01)
    path = sparsekit.save_ticket(t, tmp_path / "vit.safetensors")
    assert path.stat().st_size <= 16 * 1024


def test_files_open_with_the_safetensors_library(tmp_path):
    from safetensors import safe_open

    model = small_cnn()
    t = sparsekit.prune(model, "er-erk", 0.1)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors", weights="kept")
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "sparsekit-ticket"
        assert torch.equal(f.get_tensor("state/0.bias"), model[0].bias.detach())


def test_files_are_reproducible(tmp_path):
    t = sparsekit.prune(small_cnn(), "er-erk", 0.1, seed=1)
    a = sparsekit.save_ticket(t, tmp_path / "a.safetensors").read_bytes()
    b = sparsekit.save_ticket(t, tmp_path / "b.safetensors").read_bytes()
    assert a == b


def test_weights_kept_reproduce_logits(tmp_path):
    torch.manual_seed(0)
    model = small_cnn()
    t = sparsekit.prune(model, "er-balanced", 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
    path = sparsekit.save_ticket(t, tmp_path / "w.safetensors", weights="kept")
    fresh = small_cnn()
    sparsekit.apply_ticket(fresh, path)
    model.eval()
    fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), fresh(x))
    assert sparsekit.is_pruned(fresh)


def test_weights_in_half_precision(tmp_path):
    model = transformer()
    t = sparsekit.prune(model, "er-uniform", 0.05)
    p32 = sparsekit.save_ticket(t, tmp_path / "a.safetensors", weights="kept")
    p16 = sparsekit.save_ticket(t, tmp_path / "b.safetensors", weights="kept", weights_dtype=torch.bfloat16)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    fresh = transformer()
    sparsekit.apply_ticket(fresh, p16)
    w = fresh.layers[0].linear1.weight
    assert torch.equal(w, model.layers[0].linear1.weight.to(torch.bfloat16).float())


def test_learned_mask_ticket_roundtrip(tmp_path):
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 10))
    t = sparsekit.prune(model, "er-uniform", 0.3)
    gen = torch.Generator().manual_seed(5)
    from sparsekit.masks import CompactMask

    arbitrary = {k: CompactMask.from_bool(torch.rand(v.shape, generator=gen) < d)
                 for (k, v), d in zip(t.masks.items(), (0.004, 0.6), strict=True)}
    t.kind = "rewired"
    t.compact_masks = arbitrary
    for r in t.layers:
        r.nonzeros = arbitrary[r.fqn].nnz
    path, back = roundtrip(tmp_path, t)
    assert back.kind == "rewired"
    assert all(torch.equal(back.masks[k], t.masks[k]) for k in t.masks)


def test_wrong_architecture_fails_cleanly_and_leaves_model_untouched(tmp_path):
    t = sparsekit.prune(small_cnn(), "er-erk", 0.1)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors")
    other = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(TicketError, match="missing in the model: 3.weight") as e:
        sparsekit.apply_ticket(other, path)
    assert "5.weight" in str(e.value) and "9.weight" in str(e.value)
    assert not sparsekit.is_pruned(other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    bigger = nn.Sequential(*small_cnn(), nn.Linear(10, 5))
    with pytest.raises(TicketError, match="extra in the model: 10.weight"):
        sparsekit.apply_ticket(bigger, path)
    sparsekit.apply_ticket(bigger, path, strict=False)
    assert sparsekit.is_pruned(bigger)


def test_shape_mismatch_is_named(tmp_path):
    t = sparsekit.prune(nn.Sequential(nn.Linear(10, 20)), "er-uniform", 0.5)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors")
    with pytest.raises(TicketError, match=r"shape differs: 0.weight \(ticket \(20, 10\), model \(30, 10\)\)"):
        sparsekit.apply_ticket(nn.Sequential(nn.Linear(10, 30)), path)


def test_no_overwrite_without_flag(tmp_path):
    t = sparsekit.prune(small_cnn(), "er-erk", 0.1)
    target = tmp_path / "t.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sparsekit.save_ticket(t, target)
    assert target.read_bytes() == b"precious"
    sparsekit.save_ticket(t, target, overwrite=True)
    assert sparsekit.load_ticket(target).kind == "er"
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary files left


def _rewrite_meta(path, edit):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format_version="3.0"), "newer than this sparsekit"),
    (lambda m: m.update(format="other"), "not a sparsekit ticket"),
    (lambda m: m.update(ticket=m["ticket"].replace('"kind":"er"', '"kind":"magic"')), "unknown ticket kind"),
    (lambda m: m.update(ticket=m["ticket"].replace('"rng":"sk-ctr64-v1"', '"rng":"sk-ctr64-v9"')), "generator"),
    (lambda m: m.update(ticket=m["ticket"][:-5]), "not JSON"),
])
def test_header_edits_are_rejected(tmp_path, edit, match):
    t = sparsekit.prune(small_cnn(), "er-erk", 0.1)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors")
    _rewrite_meta(path, edit)
    with pytest.raises(TicketError, match=match):
        sparsekit.load_ticket(path)


def test_not_a_ticket_and_truncated(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"hello world, not a ticket at all")
    with pytest.raises(TicketError):
        sparsekit.load_ticket(bad)
    model = small_cnn()
    t = sparsekit.prune(model, "er-erk", 0.1)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors", weights="kept")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(TicketError, match="truncated|corrupted"):
        sparsekit.load_ticket(path)
    with pytest.raises(TicketError, match="does not exist"):
        sparsekit.load_ticket(tmp_path / "nope.safetensors")


def test_nonzero_count_mismatch_detected(tmp_path):
    t = sparsekit.prune(small_cnn(), "er-erk", 0.1)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors")
    _rewrite_meta(path, lambda m: m.update(ticket=m["ticket"].replace('"seed":"0"', '"seed":"1"')))
    with pytest.raises(TicketError, match="nonzeros"):
        sparsekit.load_ticket(path)


def test_metadata_matches_the_json_schema(tmp_path):
    import jsonschema
    from conftest import ROOT
    from safetensors import safe_open

    schema = json.loads((ROOT / "formats/ticket.schema.json").read_text())
    model = small_cnn()
    t = sparsekit.prune(model, "er-balanced", 0.05, flow="resample")
    paths = [sparsekit.save_ticket(t, tmp_path / "a.safetensors"),
             sparsekit.save_ticket(t, tmp_path / "b.safetensors", weights="kept", weights_dtype=torch.float16)]
    t.kind = "rewired"
    paths.append(sparsekit.save_ticket(t, tmp_path / "c.safetensors"))
    for path in paths:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["ticket"])
        jsonschema.validate(meta, schema)
    meta["seed"] = "-1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(meta, schema)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_er_ticket_saved_on_cpu_rebuilds_on_cuda(tmp_path):
    model = small_cnn()
    t = sparsekit.prune(model, "er-erk", 0.05, flow="resample", seed=77)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors")
    on_gpu = sparsekit.load_ticket(path, device="cuda")
    for k in t.masks:
        assert torch.equal(on_gpu.masks[k].cpu(), t.masks[k])


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    t = sparsekit.prune(small_cnn(), "er-erk", 0.1)
    path = sparsekit.save_ticket(t, tmp_path / "t.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@st.composite
def _layer(draw):
    kind = draw(st.sampled_from(["linear", "conv", "convT"]))
    a, b = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    if kind == "linear":
        return nn.Linear(a, b)
    g = draw(st.sampled_from([1, 2]))
    k = draw(st.integers(1, 3))
    cls = nn.Conv2d if kind == "conv" else nn.ConvTranspose2d
    return cls(a * g, b * g, k, groups=g)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mods=st.lists(_layer(), min_size=1, max_size=3), density=st.floats(1e-4, 1.0),
       kind=st.sampled_from(["er", "rewired"]), weights=st.sampled_from([None, "kept"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 2**64 - 1),
       learned_p=st.floats(0.0, 1.0))
def test_roundtrip_property(tmp_path, mods, density, kind, weights, dtype, seed, learned_p):
    model = nn.ModuleList(mods).to(dtype)
    t = sparsekit.prune(model, "er-erk", density, seed=seed)
    if kind == "rewired":
        from sparsekit.masks import CompactMask

        sparsekit.finalize(model)
        gen = torch.Generator().manual_seed(seed % 2**32)
        t.kind = "rewired"
        t.compact_masks = {k: CompactMask.from_bool(torch.rand(v.shape, generator=gen) < learned_p)
                           for k, v in t.masks.items()}
        for r in t.layers:
            if r.fqn in t.compact_masks:
                r.nonzeros = t.compact_masks[r.fqn].nnz
        sparsekit.attach(model, t)
    path = sparsekit.save_ticket(t, tmp_path / "p.safetensors", weights=weights, overwrite=True)
    back = sparsekit.load_ticket(path)
    assert back.kind == kind
    assert back.masks.keys() == t.masks.keys()
    assert all(torch.equal(back.masks[k], t.masks[k]) for k in t.masks)
    if weights:
        fresh = copy.deepcopy(model)  # same architecture; its masks and values are then discarded
        sparsekit.finalize(fresh)
        with torch.no_grad():
            for p in fresh.parameters():
                p.fill_(7)
        sparsekit.apply_ticket(fresh, back)
        for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
