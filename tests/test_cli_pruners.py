"""CLI: ``prune --method er-snip/er-synflow/er-from`` with ``--data``/``--from``, and ``fit imp``."""

from __future__ import annotations

import json

import click
import pytest
import torch
from cli_helpers import error_line, run
from click.testing import CliRunner

import sparsekit
from sparsekit.cli import SparsekitGroup
from sparsekit.cli.fit_imp import imp
from sparsekit.data import load_data
from sparsekit.models import mlp

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

DATA = "synthetic:n=64,shape=16,num_classes=4"
MODEL = "sparsekit:mlp:in_features=16,num_classes=4,hidden=(32, 24)"


@click.group(cls=SparsekitGroup)
def fit_group() -> None:
    """Stands in for ``sparsekit fit`` (the lead registers ``imp`` there with ``fit.add_command(imp)``)."""


fit_group.add_command(imp)


def run_imp(*args):
    return CliRunner().invoke(fit_group, ["imp", *[str(a) for a in args]])


def test_prune_er_snip_with_data_matches_the_library():
    torch.manual_seed(0)  # the CLI builds the model from torch's global RNG, as mlp() below does
    r = run("prune", MODEL, "--method", "er-snip", "--density", "0.1", "--data", DATA, "--seed", "3", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    torch.manual_seed(0)
    model = mlp(in_features=16, num_classes=4, hidden=(32, 24))
    expected = sparsekit.prune(model, "er-snip", 0.1, data=load_data(DATA).train, seed=3).report()
    assert [x["target_density"] for x in got["layers"]] == [x["target_density"] for x in expected.rows]
    assert got["totals"]["method"] == "er-snip" and got["totals"]["method_options"] == {}


@pytest.mark.filterwarnings("ignore:synflow removed every weight")
def test_prune_er_synflow_takes_the_input_shape_from_data():
    r = run("prune", "sparsekit:resnet20", "--method", "er-synflow", "--density", "0.05", "--data",
            "synthetic:n=8,shape=1x8x8,num_classes=4", "-O", "iterations=4", "--json")
    assert r.exit_code == 0, r.output
    totals = json.loads(r.stdout)["totals"]
    assert totals["method_options"] == {"iterations": 4, "input_shape": [1, 8, 8]}
    assert totals["expected_density"] == pytest.approx(0.05, rel=0.02)


def test_prune_er_from_a_ticket_file_without_density(tmp_path):
    model = mlp(in_features=16, num_classes=4, hidden=(32, 24))
    from sparsekit.pruners import snip

    source = snip(model, load_data(DATA).train, 0.2)
    path = sparsekit.save_ticket(source, tmp_path / "src.safetensors")
    out = tmp_path / "er.safetensors"
    r = run("prune", MODEL, "--method", "er-from", "--from", path, "-o", out)
    assert r.exit_code == 0, r.output
    assert f"er-from, density {source.realised_density:.4g}," in r.stdout  # the source's density
    ticket = sparsekit.load_ticket(out)
    assert ticket.density == pytest.approx(source.realised_density)
    assert [x.target_density for x in ticket.layers] == pytest.approx([x.realised_density for x in source.layers])


@pytest.mark.parametrize(("args", "needle"), [
    (["--method", "er-snip", "--density", "0.1"], "give --data SPEC"),
    (["--method", "er-from"], "give --from TICKET"),
    (["--method", "er-balanced", "--density", "0.1", "--from", "x.safetensors"], "does not take one"),
    (["--method", "er-balanced", "--density", "0.1", "--data", "digits"], "--data is for methods"),
    (["--method", "er-from", "--from", "missing.safetensors"], "does not exist"),
    (["--method", "er-snip", "--density", "0.1", "--data", DATA, "-O", "data=1"], "not an option"),
])
def test_prune_input_errors_are_one_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert needle in error_line(run("prune", MODEL, *args), 1)


def test_fit_imp_writes_a_lottery_ticket_and_resumes(tmp_path):
    out, hist, ck = tmp_path / "imp.safetensors", tmp_path / "h.json", tmp_path / "ck"
    args = ["--model", MODEL, "--data", DATA, "--density", "0.2", "--rounds", "2", "--epochs-per-round", "2",
            "--rewind-epoch", "1", "--batch-size", "16", "--checkpoint-dir", ck, "--no-progress"]
    r = run_imp(*args, "-o", out, "--history", hist)
    assert r.exit_code == 0, r.output
    assert "IMP ticket at density 0.2 after 2 rounds" in r.output and "written to" in r.output
    ticket = sparsekit.load_ticket(out)
    assert ticket.kind == "learned" and ticket.method == "imp" and ticket.weights
    assert ticket.method_options == {"rounds": 2, "epochs_per_round": 2, "rewind_epoch": 1}
    rows = json.loads(hist.read_text())
    assert [(x["round"], x["epoch"]) for x in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # the ticket alone gives the rewound network: masks and kept weights
    model = mlp(in_features=16, num_classes=4, hidden=(32, 24))
    sparsekit.apply_ticket(model, ticket)
    rewind = torch.load(ck / "rewind.pt", weights_only=True)
    for rec in ticket.layers:
        mask = ticket.mask(rec.fqn)
        assert torch.equal(model.get_parameter(rec.fqn)[mask], rewind[rec.fqn][mask])

    assert "--resume" in error_line(run_imp(*args), 1) or "resume=True" in error_line(run_imp(*args), 1)
    again = tmp_path / "again.safetensors"
    r = run_imp(*args, "--resume", "-o", again)
    assert r.exit_code == 0, r.output
    resumed = sparsekit.load_ticket(again)
    assert all(torch.equal(resumed.mask(x.fqn), ticket.mask(x.fqn)) for x in ticket.layers)


@pytest.mark.parametrize(("args", "needle"), [
    (["--density", "0.1", "--flow", "none"], "--flow does not apply"),
    (["--density", "0.1", "--epochs-per-round", "2", "--rewind-epoch", "3"], "--rewind-epoch 3"),
    (["--density", "0.1", "--resume"], "--resume needs --checkpoint-dir"),
    (["--density", "0.1", "-o", "imp.pt"], "must end in .safetensors"),
])
def test_fit_imp_errors(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert needle in error_line(run_imp("--data", DATA, "--model", MODEL, *args), 1)
