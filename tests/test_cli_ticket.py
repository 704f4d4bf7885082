"""Ticket files on the command line: ``prune -o *.safetensors``, ``info``, ``apply``, ``verify``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import error_line as _error_line
from cli_helpers import run, table_rows
from click.testing import Result
from models import TiedLM, mlp
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import sparsekit
from sparsekit.masks import CompactMask

SIZES = (16, 32, 16, 4)
MLP = "models:mlp:sizes=(16, 32, 16, 4)"  # tests/models.py, importable through conftest.py
OTHER_MLP = "models:mlp:sizes=(16, 24, 16, 4)"  # same layer names, first two shapes differ
MLP_LAYERS = ["0.weight", "2.weight", "4.weight"]
TIED = "models:TiedLM"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARSEKIT_DEBUG", raising=False)




def error_line(result):
    """The single ``Error: ...`` line of a run that failed with status 1."""
    return _error_line(result, exit_code=1)


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result






def tensor_bytes(path: Path) -> dict[str, int]:
    """Payload size of every tensor, read with the safetensors library."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {k: t.numel() * t.element_size() for k, t in tensors.items()}


def entropy_bits(numel: int, nnz: int) -> float:
    if nnz in (0, numel):
        return 0.0
    p = nnz / numel
    return numel * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.fixture
def ticket(tmp_path: Path) -> Path:
    """An er ticket of the MLP, masks only."""
    path = tmp_path / "t.safetensors"
    ok("prune", MLP, "-m", "erk", "-d", "0.2", "--seed", "7", "-o", path)
    return path


# --- prune -o FILE.safetensors ---------------------------------------------------------------------------


def test_prune_writes_a_ticket_with_the_library_masks(tmp_path):
    path = tmp_path / "t.safetensors"
    result = ok("prune", MLP, "-m", "erk", "-d", "0.1", "--seed", "7", "--flow", "resample", "-o", path)
    assert f"ticket written to {path}, {path.stat().st_size:,} bytes" in result.stdout
    back = sparsekit.load_ticket(path)
    expected = sparsekit.prune(mlp(SIZES), "er-erk", 0.1, seed=7, flow="resample")
    assert (back.kind, back.method, back.seed, back.flow) == ("er", "er-erk", 7, "resample")
    assert list(back.masks) == list(expected.masks) == MLP_LAYERS
    for fqn in MLP_LAYERS:
        assert torch.equal(back.masks[fqn], expected.masks[fqn]), fqn
    assert back.weights is None


def test_prune_ticket_with_kept_weights_in_half_precision(tmp_path):
    path = tmp_path / "w.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path, "--weights", "kept", "--weights-dtype", "bf16")
    back = sparsekit.load_ticket(path)
    assert back.weights is not None
    assert {k for k in back.weights if k.startswith("kept/")} == {f"kept/{f}" for f in back.compact_masks}
    assert len(back.compact_masks) >= 2
    assert all(v.dtype == torch.bfloat16 for v in back.weights.values())


def test_prune_ticket_force_and_overwrite_replace_only_when_asked(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"precious")
    refused = run("prune", MLP, "-d", "0.2", "-o", path)
    assert "--force" in error_line(refused)
    assert path.read_bytes() == b"precious"
    ok("prune", MLP, "-d", "0.2", "-o", path, "--force")
    assert sparsekit.load_ticket(path).density == 0.2
    ok("prune", MLP, "-d", "0.3", "-o", path, "--overwrite")
    assert sparsekit.load_ticket(path).density == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temporary files left


def test_prune_weights_options_need_a_ticket_out(tmp_path):
    report = tmp_path / "r.json"
    assert "--out FILE.safetensors" in error_line(run("prune", MLP, "-d", "0.2", "-o", report, "--weights", "kept"))
    assert not report.exists()
    assert "--weights kept" in error_line(run("prune", MLP, "-d", "0.2", "--weights-dtype", "fp16"))
    ok("prune", MLP, "-d", "0.2", "-o", report, "--force")
    assert json.loads(report.read_text())["totals"]["target_density"] == 0.2  # other suffixes: the report


# --- info ------------------------------------------------------------------------------------------------


def test_info_shows_provenance_layers_and_bits_per_kept_weight(ticket):
    result = ok("info", ticket)
    out = result.stdout
    t = sparsekit.load_ticket(ticket)
    assert "kind er" in out and "method er-erk" in out and "seed 7" in out and "flow repair" in out
    assert "rng sk-ctr64-v1" in out
    rows = table_rows(out)
    for r in t.layers:
        cells = rows[r.fqn]
        assert cells[1] == "×".join(map(str, r.shape))
        assert cells[3] == f"{r.realised_density:.4g}"
        assert cells[4] == f"{r.nonzeros:,}"
        assert cells[5:7] == ["seed", "0"]
    nnz = sum(r.nonzeros for r in t.layers)
    assert rows["total"][4] == f"{nnz:,}"
    bits = ticket.stat().st_size * 8 / nnz
    bound = sum(entropy_bits(r.numel, r.nonzeros) for r in t.layers) / nnz
    assert f"{bits:.4g} bits per kept weight (entropy bound of the masks: {bound:.4g} bits per kept weight)" in out
    assert "rebuilt from seed 7" in out


def test_info_json_parses_and_counts_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path, "--weights", "kept")
    got = json.loads(ok("info", path, "--json").stdout)
    t = sparsekit.load_ticket(path)
    sizes = tensor_bytes(path)
    assert (got["kind"], got["method"], got["seed"], got["exact"]) == ("er", "er-balanced", 0, False)
    assert got["masks_rebuilt_from_seed"] is True
    assert [r["fqn"] for r in got["layers"]] == MLP_LAYERS
    assert [r["nonzeros"] for r in got["layers"]] == [r.nonzeros for r in t.layers]
    dense = [r.fqn for r in t.layers if r.target_density >= 1]
    assert dense == ["4.weight"]  # er-balanced keeps the small last layer dense at this density
    assert [r["encoding"] for r in got["layers"]] == ["seed", "seed", "dense"]
    assert [r["bytes"] for r in got["layers"]] == [sizes["kept/0.weight"], sizes["kept/2.weight"],
                                                   sizes["state/4.weight"]]  # er: no mask bytes
    totals = got["totals"]
    assert totals["file_bytes"] == path.stat().st_size
    assert totals["state_bytes"] == sum(v for k, v in sizes.items() if k.endswith(".bias"))
    assert totals["header_bytes"] + sum(sizes.values()) == path.stat().st_size
    assert totals["bits_per_kept_weight"] == pytest.approx(path.stat().st_size * 8 / totals["nonzeros"])
    assert got["realised_density"] == pytest.approx(t.realised_density)


def test_info_of_a_stored_mask_ticket_names_the_encoding(tmp_path):
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 10))
    t = sparsekit.prune(model, "er-uniform", 0.3)
    gen = torch.Generator().manual_seed(5)
    t.kind = "rewired"
    t.compact_masks = {k: CompactMask.from_bool(torch.rand(v.shape, generator=gen) < d)
                       for (k, v), d in zip(t.masks.items(), (0.004, 0.6), strict=True)}
    for r in t.layers:
        r.nonzeros = t.compact_masks[r.fqn].nnz
    path = sparsekit.save_ticket(t, tmp_path / "r.safetensors")
    got = json.loads(ok("info", path, "--json").stdout)
    sizes = tensor_bytes(path)
    with safe_open(str(path), framework="pt") as f:
        rows = json.loads(f.metadata()["ticket"])["layers"]
    assert got["masks_rebuilt_from_seed"] is False
    assert [r["encoding"] for r in got["layers"]] == [r["encoding"] for r in rows]
    assert all(r["encoding"] != "seed" for r in got["layers"])
    assert [r["bytes"] for r in got["layers"]] == [sizes[f"mask/{r['fqn']}"] for r in rows]
    assert all(r["bytes"] > 0 for r in got["layers"])
    assert "stored in the file" in ok("info", path).stdout


# --- apply -----------------------------------------------------------------------------------------------


def test_apply_writes_the_masked_state_dict(tmp_path, ticket):
    out = tmp_path / "sparse.safetensors"
    result = ok("apply", ticket, MLP, "-o", out)
    assert f"wrote {out}" in result.stdout
    saved = load_file(str(out))
    assert sorted(saved) == sorted(mlp(SIZES).state_dict())
    masks = sparsekit.load_ticket(ticket).masks
    for fqn in MLP_LAYERS:
        assert torch.equal(saved[fqn] != 0, masks[fqn]), fqn  # zeros exactly where the ticket prunes
    assert all(saved[k].count_nonzero() == saved[k].numel() for k in saved if k.endswith(".bias"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.safetensors", "t.safetensors"]


def test_apply_tied_model_writes_both_names(tmp_path):
    path, out = tmp_path / "tied.safetensors", tmp_path / "out.safetensors"
    ok("prune", TIED, "-d", "0.2", "-o", path, "--weights", "kept", "--include-embeddings")
    ok("apply", path, TIED, "-o", out, "--no-strict")
    saved = load_file(str(out))
    assert sorted(saved) == sorted(TiedLM().state_dict())  # emb.weight and head.weight, both present
    t = sparsekit.load_ticket(path)
    assert torch.equal(saved["emb.weight"], saved["head.weight"])
    assert torch.equal(saved["emb.weight"] != 0, t.masks["emb.weight"])
    assert torch.equal(saved["hidden.weight"] != 0, t.masks["hidden.weight"])
    kept = t.masks["emb.weight"].reshape(-1).nonzero().squeeze(1)
    assert torch.equal(saved["emb.weight"].reshape(-1)[kept], t.weights["kept/emb.weight"])


def test_apply_strict_to_a_tied_model(tmp_path):
    path, out = tmp_path / "tied.safetensors", tmp_path / "out.safetensors"
    ok("prune", TIED, "-d", "0.2", "-o", path, "--include-embeddings")
    ok("apply", path, TIED, "-o", out)


def test_apply_to_a_wrong_architecture_names_the_layer_and_writes_nothing(tmp_path, ticket):
    out = tmp_path / "sparse.safetensors"
    line = error_line(run("apply", ticket, OTHER_MLP, "-o", out))
    assert "0.weight" in line and "shape" in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_apply_never_overwrites_without_force(tmp_path, ticket):
    out = tmp_path / "sparse.safetensors"
    out.write_bytes(b"precious")
    line = error_line(run("apply", ticket, MLP, "-o", out))
    assert "--force" in line
    assert out.read_bytes() == b"precious"
    ok("apply", ticket, MLP, "-o", out, "--force")
    assert sorted(load_file(str(out))) == sorted(mlp(SIZES).state_dict())


# --- verify ----------------------------------------------------------------------------------------------


def test_verify_accepts_a_good_pair(tmp_path, ticket):
    applied = tmp_path / "applied.safetensors"
    ok("apply", ticket, MLP, "-o", applied)
    result = ok("verify", ticket, applied)  # a state_dict file needs no --arch: its tensors are read as they are
    assert result.stdout.splitlines()[-1].startswith("ok: ")
    rows = table_rows(result.stdout)
    assert all(rows[name][-1] == "0" for name in MLP_LAYERS)
    weighted, applied_w = tmp_path / "w.safetensors", tmp_path / "applied_w.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", weighted, "--weights", "kept")
    ok("apply", weighted, MLP, "-o", applied_w)
    assert "stored weight values match" in ok("verify", weighted, applied_w).stdout


def test_verify_fails_on_an_unpruned_file_and_on_a_wrong_seed(tmp_path, ticket):
    dense = tmp_path / "dense.pt"
    torch.save(mlp(SIZES).state_dict(), dense)
    result = run("verify", ticket, dense)
    line = error_line(result)
    t = sparsekit.load_ticket(ticket)
    pruned = sum(r.numel - r.nonzeros for r in t.layers)
    assert f"{pruned:,} of {pruned:,} pruned positions hold nonzero values" in line
    assert "3 of 3 masked layers" in line
    rows = table_rows(result.stdout)
    for r in t.layers:  # per layer: pruned positions and how many of them are nonzero
        assert rows[r.fqn][2] == f"{r.numel - r.nonzeros:,}" and rows[r.fqn][3] == f"{r.numel - r.nonzeros:,}"
    other = tmp_path / "seed8.pt"
    ok("prune", MLP, "-m", "erk", "-d", "0.2", "--seed", "8", "-o", other)  # same density, another seed
    line = error_line(run("verify", ticket, other))
    assert "hold nonzero values" in line and "another seed" in line
    assert "hold nonzero values" in error_line(run("verify", ticket, MLP))  # a fresh model is not pruned
    js = run("verify", ticket, dense, "--json")
    assert js.exit_code == 1
    assert json.loads(js.stdout)["nonzero_at_pruned"] == pruned


def test_verify_rejects_a_ticket_whose_header_was_edited(ticket):
    data = ticket.read_bytes()
    seed = b'\\"seed\\":\\"7\\"'  # the ticket JSON sits inside the header JSON as a string
    assert data.count(seed) == 1
    ticket.write_bytes(data.replace(seed, b'\\"seed\\":\\"8\\"'))  # same length: the framing stays valid
    assert "nonzeros" in error_line(run("verify", ticket, MLP))


def test_verify_rejects_a_wrong_model(ticket):
    assert "0.weight" in error_line(run("verify", ticket, OTHER_MLP))
    assert "missing in the model" in error_line(run("verify", ticket, TIED))


def test_verify_checks_counts_and_stored_values(tmp_path, monkeypatch):
    path, applied = tmp_path / "w.safetensors", tmp_path / "applied.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path, "--weights", "kept")
    ok("apply", path, MLP, "-o", applied)
    ok("verify", path, applied)
    tensors = load_file(str(applied))
    t = sparsekit.load_ticket(path)
    kept = t.compact_masks["2.weight"].kept_indices()
    tensors["2.weight"].view(-1)[kept[0]] += 1  # one kept value changed
    changed = tmp_path / "changed.safetensors"
    from safetensors.torch import save_file

    save_file(tensors, str(changed))
    line = error_line(run("verify", path, changed))
    assert "1 kept weights differ" in line and "2.weight" in line
    real_load = sparsekit.load_ticket

    def wrong_count(p, **kw):
        t = real_load(p, **kw)
        t.layers[1].nonzeros += 1
        return t

    with monkeypatch.context() as m:
        m.setattr(sparsekit, "load_ticket", wrong_count)
        line = error_line(run("verify", path, applied))
        assert "2.weight" in line and "nonzeros" in line


# --- damaged files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "verify", "apply"])
def test_truncated_ticket_is_one_line_error(tmp_path, command):
    path = tmp_path / "t.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path, "--weights", "kept")
    path.write_bytes(path.read_bytes()[:-10])
    out = tmp_path / "out.safetensors"
    args = {"info": [path], "verify": [path, MLP], "apply": [path, MLP, "-o", out]}[command]
    line = error_line(run(command, *args))
    assert "truncated" in line and str(path) in line
    assert not out.exists()


def test_missing_and_non_ticket_files_are_one_line_errors(tmp_path):
    assert "does not exist" in error_line(run("info", tmp_path / "nope.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not a ticket at all")
    assert "not" in error_line(run("info", junk))
    assert "not" in error_line(run("verify", junk, MLP))


def test_applied_safetensors_output_verifies_with_arch(tmp_path, ticket):
    out = tmp_path / "masked.safetensors"
    assert run("apply", ticket, MLP, "-o", out).exit_code == 0
    result = run("verify", ticket, out, "--arch", MLP)
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    # a ticket given where a model is expected is refused with a clear message
    bad = run("verify", ticket, ticket, "--arch", MLP)
    assert bad.exit_code == 1 and "is a sparsekit ticket, not a model" in bad.output
