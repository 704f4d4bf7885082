"""Golden ticket files (formats/vectors/): decode to the recorded masks, re-encode to the same bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch
from conftest import ROOT

import sparsekit
import sparsekit.formats.ticket_file as tf

VEC = ROOT / "formats/vectors"
DOC = json.loads((VEC / "ticket-vectors-v1.json").read_text())
spec = importlib.util.spec_from_file_location("generate_tickets", VEC / "generate_tickets.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def unpack(hexstr: str, shape) -> torch.Tensor:
    data = bytes.fromhex(hexstr)
    n = 1
    for d in shape:
        n *= d
    return torch.tensor([bool(data[i // 8] >> (i % 8) & 1) for i in range(n)]).view(shape)


@pytest.fixture
def golden_version(monkeypatch):
    """Re-encoding writes the golden file's sparsekit_version, so a version bump does not break this."""
    monkeypatch.setattr(tf, "__version__", "0.1.0")


@pytest.mark.parametrize("kind", ["er", "rewired", "weights"])
def test_golden_file_decodes_to_recorded_masks(kind):
    entry = DOC["files"][kind]
    path = VEC / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    ticket = sparsekit.load_ticket(path)
    assert set(ticket.masks) == set(entry["masks"])
    for fqn, hexbits in entry["masks"].items():
        shape = next(r.shape for r in ticket.layers if r.fqn == fqn)
        assert torch.equal(ticket.masks[fqn], unpack(hexbits, shape)), fqn


@pytest.mark.parametrize("kind", ["er", "rewired"])
def test_golden_file_reencodes_byte_for_byte(tmp_path, golden_version, kind):
    path = VEC / DOC["files"][kind]["file"]
    out = sparsekit.save_ticket(sparsekit.load_ticket(path), tmp_path / "again.safetensors")
    assert out.read_bytes() == path.read_bytes()


def test_golden_weights_file_rebuilds_the_model_and_reencodes(tmp_path, golden_version):
    path = VEC / DOC["files"]["weights"]["file"]
    expect = gen.golden_model()
    sparsekit.prune(expect, "er-pyramidal", 0.3, seed=7, flow="repair")
    fresh = gen.golden_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    sparsekit.apply_ticket(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), expect.state_dict().values(),
                                                 strict=True))
    ticket = sparsekit.load_ticket(path)
    out = sparsekit.save_ticket(ticket, tmp_path / "again.safetensors", weights="kept", model=fresh)
    assert out.read_bytes() == path.read_bytes()
