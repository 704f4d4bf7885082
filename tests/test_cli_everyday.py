"""The everyday command line: default density, plain state_dicts without --arch, output by suffix,
tables that fit 80 columns (through a real pty), and the one-line refusals around ``--out``."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import error_line, run, table_rows
from models import mlp
from torch import nn

import sparsekit
from sparsekit.cli._state_dict_model import classify_weights

SIZES = (16, 32, 16, 4)
MLP = "models:mlp:sizes=(16, 32, 16, 4)"
ROOT = Path(__file__).resolve().parents[1]


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def _mobile() -> nn.Module:
    """Pointwise, depthwise and plain convolutions, then a Linear head."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1),
                         nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), nn.Linear(16 * 4, 10))


def test_prune_a_plain_state_dict_with_the_default_density_and_write_a_loadable_pt(tmp_path):
    src = tmp_path / "model.pt"
    torch.save(mlp(SIZES).state_dict(), src)
    out = tmp_path / "pruned.pt"
    result = ok("prune", src, "--method", "pyramidal", "-o", out)
    assert "the default density 0.01" in result.stdout
    sd = torch.load(out, weights_only=True)
    original = torch.load(src, weights_only=True)
    assert list(sd) == list(original)
    ticket = sparsekit.prune(mlp(SIZES), "pyramidal")  # the library's default density, seed 0
    assert ticket.density == 0.01
    for fqn, mask in ticket.masks.items():
        assert torch.equal(sd[fqn] != 0, mask & (original[fqn] != 0))
        assert torch.equal(sd[fqn][mask], original[fqn][mask])  # kept values are untouched
    assert torch.equal(sd["0.bias"], original["0.bias"])
    net = mlp(SIZES)
    net.load_state_dict(sd)  # a state_dict of the same model


def test_pt_output_keeps_the_input_layout(tmp_path):
    src = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, "model": mlp(SIZES).state_dict()}, src)
    out = tmp_path / "pruned.pth"
    ok("prune", src, "-d", "0.2", "-o", out)
    obj = torch.load(out, weights_only=True)
    assert obj["epoch"] == 7 and set(obj["model"]) == set(mlp(SIZES).state_dict())
    ticket_path = tmp_path / "t.safetensors"
    ok("prune", src, "-d", "0.2", "-o", ticket_path)
    torch.save(obj["model"], tmp_path / "plain.pt")
    ok("verify", ticket_path, tmp_path / "plain.pt")


def test_depthwise_convolutions_are_detected_and_masks_match_the_arch(tmp_path, monkeypatch):
    (tmp_path / "cli_mobile_models.py").write_text(
        "from torch import nn\n\ndef mobile():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), "
        "nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), "
        "nn.Linear(16 * 4, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_mobile_models", raising=False)
    kinds = classify_weights(_mobile().state_dict())
    assert {k: (name, lo.groups) for k, (name, lo) in kinds.items()} == {
        "0.weight": ("Conv2d", 1), "2.weight": ("Conv2d", 8), "3.weight": ("Conv2d", 1),
        "4.weight": ("Conv2d", 16), "6.weight": ("Linear", 1)}
    torch.save(_mobile().state_dict(), tmp_path / "m.pt")
    without = json.loads(ok("prune", "m.pt", "-d", "0.3", "--json").stdout)["layers"]
    with_arch = json.loads(ok("prune", "m.pt", "--arch", "cli_mobile_models:mobile", "-d", "0.3", "--json")
                           .stdout)["layers"]
    assert [{k: v for k, v in r.items() if k != "module_type"} for r in without] == \
        [{k: v for k, v in r.items() if k != "module_type"} for r in with_arch]


def test_ambiguous_groups_are_a_clear_error(tmp_path):
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2))
    path = tmp_path / "g.pt"
    torch.save(grouped.state_dict(), path)
    line = error_line(run("prune", path), 1)
    assert "'1.weight'" in line and "groups" in line and "--arch" in line
    # a residual projection with other input channels is fine
    assert classify_weights({"a.weight": torch.zeros(8, 3, 3, 3), "b.weight": torch.zeros(8, 8, 3, 3),
                             "downsample.0.weight": torch.zeros(8, 3, 1, 1)})["downsample.0.weight"][1].groups == 1


def test_embeddings_stay_dense_and_transposed_convs_use_their_axes():
    kinds = classify_weights({"embed_tokens.weight": torch.zeros(50, 8), "up.deconv.weight": torch.zeros(8, 4, 2, 2),
                              "head.weight": torch.zeros(3, 8)})
    assert kinds["embed_tokens.weight"][0] == "Embedding"
    assert kinds["up.deconv.weight"][0] == "ConvTranspose2d" and kinds["up.deconv.weight"][1].out_axis == 1
    assert kinds["head.weight"][0] == "Linear"


@pytest.mark.parametrize("name", ["out.txt", "ticket", "model.onnx"])
def test_out_suffix_is_checked_before_any_work(tmp_path, name):
    line = error_line(run("prune", MLP, "-o", tmp_path / name), 1)
    assert ".safetensors" in line and ".pt" in line and ".json" in line
    assert not (tmp_path / name).exists()


def test_out_that_looks_like_an_option_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(run("prune", MLP, "-o", "redistribute=False"), 1)
    assert "-O/--option" in line
    assert not (tmp_path / "redistribute=False").exists()
    help_text = " ".join(run("prune", "--help").stdout.split())
    assert "-o redistribute" not in help_text and "-O redistribute=False" in help_text


def test_json_out_still_writes_the_report(tmp_path):
    out = tmp_path / "r.json"
    ok("prune", MLP, "-d", "0.2", "-o", out)
    assert [r["fqn"] for r in json.loads(out.read_text())["layers"]] == ["0.weight", "2.weight", "4.weight"]


# --- 80 columns, through a real terminal -----------------------------------------------------------------


def _in_pty(args: list[str], cwd: Path, columns: int = 80) -> str:
    """Run ``python -m sparsekit ARGS`` with stdout on a pty of ``columns`` columns; its output as text."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "TERM": "xterm", "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsekit", *args], stdout=slave, stderr=subprocess.STDOUT,
                            cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # styles take no columns


def test_prune_and_info_fit_80_columns_with_every_layer_name(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "t.safetensors"
    text = _in_pty(["prune", "torchvision:resnet18", "-o", str(out)], tmp_path)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    names = [r.fqn for r in sparsekit.load_ticket(out).layers]
    rows = table_rows(text)
    assert all(name in rows for name in names), text
    assert all(rows[n][1] for n in names)  # densities are there, not cut
    assert "left out to fit 80 columns" in " ".join(text.split())
    info = _in_pty(["info", str(out)], tmp_path)
    assert max(len(line) for line in info.splitlines()) <= 80, info
    assert all(name in table_rows(info) for name in names), info
    wide = run("prune", "torchvision:resnet18", env={"COLUMNS": "160"}).stdout
    assert "rows repaired" in wide and "left out" not in wide
    assert max(len(line) for line in wide.splitlines()) <= 160


def test_long_names_are_shortened_from_the_left_at_80_columns(tmp_path):
    from rich.console import Console

    from sparsekit.cli._options import Col, print_table

    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    name = "encoder.layers.11.attention.self_attention.query_key_value_projection.weight"
    dropped = print_table(console, [Col("layer", right=False, name=True), Col("extra", drop=1), Col("n")],
                          [[name, "x" * 30, "1,234"]])
    text = console.export_text()
    assert dropped == ["extra"]
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" in text and "query_key_value_projection.weight" in text and "1,234" in text


# --- tickets record their model --------------------------------------------------------------------------


def test_tickets_record_the_model_spec_for_info_apply_verify(tmp_path):
    from sparsekit.formats.ticket_file import read_ticket_metadata

    path, applied = tmp_path / "t.safetensors", tmp_path / "applied.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path)
    h = read_ticket_metadata(path)
    assert h.ticket["model"] == {"spec": MLP} and h.meta["format_version"] == "1.1"
    assert f"model: {MLP}" in ok("info", path).stdout
    assert json.loads(ok("info", path, "--json").stdout)["model"] == {"spec": MLP}
    ok("apply", path, "-o", applied)  # MODEL defaults to the recorded spec
    ok("verify", path, applied)
    line = error_line(run("verify", path), 1)  # the recorded builder gives an unpruned model
    assert "hold nonzero values" in line
    line = error_line(run("apply", path, "models:TiedLM", "-o", tmp_path / "x.safetensors"), 1)
    assert f"made from {MLP}" in line
    # a ticket written from Python records no model: MODEL is then required, and the file stays format 1.0
    py = tmp_path / "py.safetensors"
    sparsekit.save_ticket(sparsekit.prune(mlp(SIZES), density=0.2), py)
    assert read_ticket_metadata(py).meta["format_version"] == "1.0"
    assert "give MODEL" in error_line(run("apply", py, "-o", tmp_path / "y.safetensors"), 1)


def test_recorded_model_follows_the_schema_and_is_checked_by_the_reader(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from sparsekit.formats.ticket_file import read_ticket_metadata

    path = tmp_path / "t.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path)
    schema = json.loads((ROOT / "formats" / "ticket.schema.json").read_text())
    meta = read_ticket_metadata(path).ticket
    jsonschema.validate(meta, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**meta, "model": {"arch": "x"}}, schema)
    data = path.read_bytes()
    bad = data.replace(b'\\"model\\":{\\"spec\\":', b'\\"model\\":{\\"spex\\":')
    assert bad != data
    path.write_bytes(bad)
    with pytest.raises(sparsekit.TicketError, match="model"):
        sparsekit.load_ticket(path)


def test_no_strict_is_named_as_the_cli_flag(tmp_path):
    path = tmp_path / "t.safetensors"
    ok("prune", MLP, "-d", "0.2", "-o", path)
    (tmp_path / "cli_extra_models.py").write_text(
        "from torch import nn\n\ndef bigger():\n    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), "
        "nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 4))\n")
    import os as _os

    cwd = _os.getcwd()
    _os.chdir(tmp_path)
    try:
        sys.modules.pop("cli_extra_models", None)
        line = error_line(run("apply", path, "cli_extra_models:bigger", "-o", tmp_path / "o.safetensors"), 1)
    finally:
        _os.chdir(cwd)
    assert "--no-strict" in line and "strict=False" not in line


# --- small things ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "scope"), [("magnitude", "global"), ("magnitude-layerwise", "layerwise")])
def test_prune_magnitude_matches_torch_nn_utils_prune(tmp_path, method, scope):
    import torch.nn.utils.prune as tprune

    src = tmp_path / "m.pt"
    torch.manual_seed(0)
    torch.save(mlp(SIZES).state_dict(), src)
    out = tmp_path / "p.pt"
    ok("prune", src, "-m", method, "-d", "0.3", "-o", out)
    ours = torch.load(out, weights_only=True)
    ref = mlp(SIZES)
    ref.load_state_dict(torch.load(src, weights_only=True))
    linears = [(m, "weight") for m in ref if isinstance(m, nn.Linear)]
    if scope == "global":
        tprune.global_unstructured(linears, pruning_method=tprune.L1Unstructured, amount=0.7)
    else:
        for m, name in linears:
            tprune.l1_unstructured(m, name, amount=0.7)
    for i, (m, _) in zip((0, 2, 4), linears, strict=True):
        assert torch.equal(ours[f"{i}.weight"] != 0, m.weight != 0)
    assert "are for ER methods" in error_line(run("prune", src, "-m", method, "--exact"), 1)


def test_sparsity_reports_any_checkpoint_per_layer(tmp_path):
    out = tmp_path / "p.pt"
    ok("prune", MLP, "-d", "0.2", "-o", out)
    result = ok("sparsity", out)
    rows = table_rows(result.stdout)
    sd = torch.load(out, weights_only=True)
    for name in ("0.weight", "2.weight", "4.weight"):
        assert rows[name][3] == f"{int(torch.count_nonzero(sd[name])):,}"
    js = json.loads(ok("sparsity", out, "--json").stdout)
    names = ("0.weight", "2.weight", "4.weight")
    assert js["totals"]["nonzeros"] == sum(int(torch.count_nonzero(sd[n])) for n in names)
    dense = json.loads(ok("sparsity", MLP, "--json").stdout)
    assert dense["totals"]["density"] == 1.0


def test_info_on_a_non_ticket_says_what_the_file_is(tmp_path):
    sd = tmp_path / "model.pt"
    torch.save(mlp(SIZES).state_dict(), sd)
    line = error_line(run("info", sd), 1)
    assert "is not a sparsekit ticket: it is a state_dict of 6 tensors" in line and "sparsekit sparsity" in line


def test_ticket_repr_is_one_line():
    ticket = sparsekit.prune(mlp(SIZES), density=0.2)
    text = repr(ticket)
    assert "\n" not in text and "LayerRecord" not in text and f"layers=3 ({len(ticket.compact_masks)} masked)" in text
    head = str(ticket.report()).splitlines()[0].split("  ")
    from sparsekit.cli.prune import REPORT_COLUMNS

    assert [h.strip() for h in head if h.strip()] == [c.header for c in REPORT_COLUMNS]


def test_did_you_mean_for_methods_and_bare_model_names():
    line = error_line(run("prune", MLP, "-m", "pyramdal"), 1)
    assert "did you mean pyramidal" in line
    line = error_line(run("prune", "resnet18"), 1)
    assert "did you mean sparsekit:resnet18 or torchvision:resnet18" in line


def test_export_takes_model_and_out_like_every_command(tmp_path):
    pytest.importorskip("onnxruntime")
    path, out = tmp_path / "t.safetensors", tmp_path / "m.onnx"
    ok("prune", MLP, "-d", "0.2", "-o", path)
    ok("export", path, "-o", out, "--input-shape", "1,16", "--no-verify")  # MODEL from the ticket
    assert out.stat().st_size > 0
    ok("export", path, MLP, "--out", out, "--input-shape", "1,16", "--no-verify", "--force")
    assert "differ" in error_line(run("export", path, MLP, "--model", "sparsekit:mlp", "-o", out, "--force",
                                      "--input-shape", "1,16"), 1)
    assert "-O/--option" in error_line(run("export", path, "-o", "storage=compact", "--input-shape", "1,16"), 1)


def test_multi_line_messages_keep_their_lines_and_usage_errors_are_one_line():
    result = run("fit", "weak", "--data", "nowhere:/x", "-d", "0.1")
    line = error_line(result, 1)
    assert line.endswith("expected one of:")
    rest = result.stderr.splitlines()[1:]
    assert any(r.lstrip().startswith("digits[") for r in rest) and all(r.startswith("  ") for r in rest)
    usage = run("prune", MLP, "--bogus")
    assert "No such option" in error_line(usage, 1) and "prune --help" in usage.stderr
    assert len(usage.stderr.strip().splitlines()) == 1
