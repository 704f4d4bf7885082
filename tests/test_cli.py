"""The ``sparsekit`` command line (sparsekit/cli), driven through click's CliRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cli_helpers import error_line, run, table_rows
from models import mlp
from torch import nn

import sparsekit
from sparsekit.cli._models import export_layer_layouts, load_model, parse_kwargs

SIZES = (16, 32, 16, 4)
MLP = "models:mlp:sizes=(16, 32, 16, 4)"  # tests/models.py, importable through conftest.py
MLP_LAYERS = ["0.weight", "2.weight", "4.weight"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARSEKIT_DEBUG", raising=False)








def library_report(model: nn.Module, method: str, density: float, **kwargs: object) -> sparsekit.Report:
    return sparsekit.prune(model, method, density, **kwargs).report()


# --- prune: output ---------------------------------------------------------------------------------------


def test_prune_prints_table_with_layers_and_totals():
    result = run("prune", MLP, "--method", "pyramidal", "--density", "0.2")
    assert result.exit_code == 0, result.output
    expected = library_report(mlp(SIZES), "er-pyramidal", 0.2)
    rows = table_rows(result.stdout)
    for r in expected.rows:
        cells = rows[r["fqn"]]
        assert cells[1] == "×".join(map(str, r["shape"]))
        assert cells[5] == f"{r['nonzeros']:,}"
    total = rows["total"]
    assert total[3] == "0.2"
    assert total[4] == f"{expected.totals['realised_density']:.4g}"
    assert total[5] == f"{expected.totals['nonzeros']:,}"
    assert "er-pyramidal" in result.stdout
    assert f"realised {expected.totals['realised_density']:.4g}" in result.stdout
    assert "pruned in" in result.stdout


def test_prune_json_matches_the_library():
    result = run("prune", MLP, "-m", "erk", "-d", "0.1", "--seed", "7", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    expected = library_report(mlp(SIZES), "er-erk", 0.1, seed=7)
    assert [r["fqn"] for r in got["layers"]] == MLP_LAYERS
    assert [r["nonzeros"] for r in got["layers"]] == [r["nonzeros"] for r in expected.rows]
    assert got["totals"]["realised_density"] == expected.totals["realised_density"]
    assert got["totals"]["seed"] == 7 and got["totals"]["method"] == "er-erk"


def test_prune_flow_exact_options_and_dense():
    result = run("prune", MLP, "-m", "balanced", "-d", "0.3", "--flow", "none", "--exact",
                 "-O", "redistribute=False", "--dense", "4.weight", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    expected = library_report(mlp(SIZES), "er-balanced", 0.3, flow=None, exact=True, redistribute=False,
                              dense=["4.weight"])
    assert got["totals"]["flow"] is None and got["totals"]["exact"] is True
    assert got["totals"]["method_options"] == {"redistribute": False}
    assert got["layers"][2]["target_density"] == 1.0
    assert [r["nonzeros"] for r in got["layers"]] == [r["nonzeros"] for r in expected.rows]


@pytest.mark.parametrize("pattern", ["0", "0.weight", r"[0]\.w.*"])
def test_exclude_by_module_or_parameter_name(pattern):
    result = run("prune", MLP, "-d", "0.2", "--exclude", pattern, "--json")
    assert result.exit_code == 0, result.output
    assert [r["fqn"] for r in json.loads(result.stdout)["layers"]] == MLP_LAYERS[1:]


def test_exclude_that_matches_nothing_is_an_error():
    result = run("prune", MLP, "-d", "0.2", "--exclude", "layer9")
    assert result.exit_code == 1
    assert "'layer9' matches no module or parameter name" in error_line(result)


def test_unknown_method_option_is_one_line_error():
    result = run("prune", MLP, "-m", "balanced", "-d", "0.2", "-O", "colour=1")
    assert result.exit_code == 1
    line = error_line(result)
    assert "'colour'" in line and "redistribute" in line


def test_long_reports_elide_the_middle_unless_all(tmp_path, monkeypatch):
    (tmp_path / "cli_deep_models.py").write_text(
        "from torch import nn\n\ndef deep(n=70):\n    return nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)])\n")
    monkeypatch.chdir(tmp_path)  # factory specs import from the current folder, like python -m
    monkeypatch.delitem(sys.modules, "cli_deep_models", raising=False)
    short = run("prune", "cli_deep_models:deep", "-m", "uniform", "-d", "0.5")
    assert short.exit_code == 0, short.output
    rows = table_rows(short.stdout)
    assert "0.weight" in rows and "69.weight" in rows and "35.weight" not in rows
    assert "… 20 more layers" in short.stdout
    full = run("prune", "cli_deep_models:deep", "-m", "uniform", "-d", "0.5", "--all")
    assert full.exit_code == 0, full.output
    assert all(f"{i}.weight" in table_rows(full.stdout) for i in range(70))
    assert "more layers" not in full.stdout


def test_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    result = run("prune", "torchvision:resnet18:num_classes=10", "--method", "pyramidal", "--density", "0.01")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert {"conv1.weight", "layer4.1.conv2.weight", "fc.weight"} <= set(rows)
    expected = library_report(tv.models.resnet18(num_classes=10), "er-pyramidal", 0.01)
    assert rows["total"][4] == f"{expected.totals['realised_density']:.4g}"
    assert rows["fc.weight"][1] == "10×512"


# --- prune: input errors ---------------------------------------------------------------------------------


def test_unknown_method_lists_the_valid_names():
    result = run("prune", MLP, "--method", "lottery", "--density", "0.1")
    assert result.exit_code == 1
    assert "Usage:" not in result.output
    line = error_line(result)
    assert "'lottery'" in line
    for name in sparsekit.list_methods():
        assert name in line


@pytest.mark.parametrize("density", ["0", "1.5", "abc", "nan", "-0.1"])
def test_bad_density_is_rejected_without_traceback(density):
    result = run("prune", MLP, "--density", density)
    assert result.exit_code == 1
    assert "Usage:" not in result.output
    assert isinstance(result.exception, SystemExit)
    line = error_line(result)
    assert "--density" in line and "(0, 1]" in line


@pytest.mark.parametrize(("spec", "needle"), [
    ("nonsense", "'nonsense'"),
    ("missing_model.pt", "missing_model.pt does not exist"),
    ("torchvision:resnt18", "did you mean resnet18"),
    ("no_such_module_xyz:build", "no module named 'no_such_module_xyz'"),
    ("models:no_such_factory", "has no attribute 'no_such_factory'"),
    ("models:mlp:sizes", "expected KEY=VALUE"),
])
def test_bad_model_spec_is_one_clear_line(spec, needle):
    result = run("prune", spec, "--density", "0.1")
    assert result.exit_code == 1
    line = error_line(result)
    assert needle in line


def test_torchvision_never_downloads_weights():
    pytest.importorskip("torchvision")
    result = run("prune", "torchvision:resnet18:weights=DEFAULT", "--density", "0.1")
    assert result.exit_code == 1
    assert "never downloads weights" in error_line(result)


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(mlp(SIZES), path)
    refused = run("prune", str(path), "--density", "0.2")
    assert refused.exit_code == 1
    assert isinstance(refused.exception, SystemExit)
    line = error_line(refused)
    assert "--trust-pickle" in line and "arbitrary code" in line
    trusted = run("prune", str(path), "--density", "0.2", "--trust-pickle", "--json")
    assert trusted.exit_code == 0, trusted.output
    assert [r["fqn"] for r in json.loads(trusted.stdout)["layers"]] == MLP_LAYERS


def test_load_model_refuses_pickles_with_unsafe_file_error(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(mlp(SIZES), path)
    with pytest.raises(sparsekit.UnsafeFileError, match="trust_pickle=True"):
        load_model(str(path))
    assert isinstance(load_model(str(path), trust_pickle=True), nn.Sequential)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_state_dict_file_without_arch_gives_the_masks_of_the_arch(tmp_path, wrap):
    source = mlp(SIZES)
    path = tmp_path / "weights.pt"
    sd = source.state_dict()
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    without = run("prune", str(path), "--density", "0.2", "--json")
    assert without.exit_code == 0, without.output
    with_arch = run("prune", str(path), "--arch", MLP, "--density", "0.2", "--json")
    assert with_arch.exit_code == 0, with_arch.output
    assert [r["fqn"] for r in json.loads(with_arch.stdout)["layers"]] == MLP_LAYERS
    assert json.loads(without.stdout)["layers"] == json.loads(with_arch.stdout)["layers"]
    loaded = load_model(str(path), arch=MLP)
    assert torch.equal(loaded.state_dict()["2.weight"], sd["2.weight"])


def test_state_dict_that_does_not_fit_arch_names_the_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(mlp(SIZES).state_dict(), path)
    result = run("prune", str(path), "--arch", "models:mlp:sizes=(16, 8, 4)", "--density", "0.2")
    assert result.exit_code == 1
    line = error_line(result)
    assert "unexpected keys: 4.weight, 4.bias" in line
    assert "0.weight (32, 16) vs (8, 16)" in line


def _scripted_file(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(mlp(SIZES)).save(str(path))
    return path


def test_torchscript_file_loads_with_its_layers(tmp_path):
    model = load_model(str(_scripted_file(tmp_path)), trust_pickle=True)
    assert isinstance(model, torch.jit.ScriptModule)
    assert [L.fqn for L in sparsekit.find_layers(model)] == MLP_LAYERS
    assert [L.module_type for L in sparsekit.find_layers(model)] == ["Linear"] * 3


def test_torchscript_file_prunes(tmp_path):
    result = run("prune", str(_scripted_file(tmp_path)), "--trust-pickle", "-m", "pyramidal", "--density", "0.2",
                 "--json")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    expected = library_report(mlp(SIZES), "er-pyramidal", 0.2)
    assert [r["nonzeros"] for r in json.loads(result.stdout)["layers"]] == [r["nonzeros"] for r in expected.rows]


def _exportable() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.ConvTranspose2d(8, 4, 3, groups=2),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_export_layer_layouts_reads_linear_conv_and_groups():
    ep = torch.export.export(_exportable(), (torch.randn(1, 4, 8, 8),))
    expected = {L.fqn: L.layout for L in sparsekit.find_layers(_exportable())}
    assert expected["2.weight"] == sparsekit.LayerLayout(1, 0, 2)
    assert export_layer_layouts(ep) == expected
    assert export_layer_layouts(ep.run_decompositions()) == expected  # aten.convolution, permute + addmm


def test_exported_pt2_file_prunes_like_the_eager_model(tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(_exportable(), (torch.randn(1, 4, 8, 8),)), str(path))
    result = run("prune", str(path), "-m", "erk", "--density", "0.05", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["layers"]
    expected = library_report(_exportable(), "er-erk", 0.05).rows
    keys = ["fqn", "module_type", "shape", "nonzeros", "edges_added", "rows_repaired", "cols_repaired"]
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]
    assert sum(r["edges_added"] for r in got) > 0  # flow repair ran, so the axes were read right


# --- --out ------------------------------------------------------------------------------------------------


def test_out_writes_json_and_never_overwrites_silently(tmp_path):
    out = tmp_path / "report.json"
    first = run("prune", MLP, "-d", "0.2", "-o", str(out))
    assert first.exit_code == 0, first.output
    written = json.loads(out.read_text())
    expected = library_report(mlp(SIZES), "er-balanced", 0.2)
    assert written["totals"]["nonzeros"] == expected.totals["nonzeros"]
    assert written["totals"]["realised_density"] == expected.totals["realised_density"]
    assert table_rows(first.stdout)["total"][5] == f"{written['totals']['nonzeros']:,}"

    out.write_text("keep me\n")
    refused = run("prune", MLP, "-d", "0.2", "--out", str(out))
    assert refused.exit_code == 1
    assert "--overwrite" in error_line(refused)
    assert out.read_text() == "keep me\n"

    replaced = run("prune", MLP, "-d", "0.3", "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(out.read_text())["totals"]["target_density"] == 0.3


def test_out_into_missing_folder_fails_before_loading(tmp_path):
    result = run("prune", "nonsense", "-d", "0.2", "--out", str(tmp_path / "nope" / "r.json"))
    assert result.exit_code == 1
    assert "does not exist" in error_line(result)


# --- methods, debug, entry points --------------------------------------------------------------------------


def test_methods_lists_names_aliases_options_and_descriptions():
    result = run("methods")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    from sparsekit._registry import method_infos

    for info in method_infos():
        assert rows[info.name][1] == ", ".join(info.aliases)
        assert info.description in rows[info.name][3]
    assert rows["er-balanced"][2] == "redistribute=True"
    listed = json.loads(run("methods", "--json").stdout)
    assert [m["name"] for m in listed] == sparsekit.list_methods()


def test_debug_env_lets_the_exception_through():
    quiet = run("prune", "nonsense", "-d", "0.1")
    assert isinstance(quiet.exception, SystemExit) and quiet.exit_code == 1
    loud = run("prune", "nonsense", "-d", "0.1", env={"SPARSEKIT_DEBUG": "1"})
    assert isinstance(loud.exception, sparsekit.SparsekitError)
    assert loud.exc_info is not None and loud.exc_info[2] is not None


def test_python_m_sparsekit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_DEBUG"}
    cmd = [sys.executable, "-m", "sparsekit", "prune", "nonsense", "--density", "0.1"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("Error: cannot read model spec 'nonsense'")
    assert len(quiet.stderr.strip().splitlines()) == 1
    loud = subprocess.run(cmd, capture_output=True, text=True, env={**env, "SPARSEKIT_DEBUG": "1"}, cwd=tmp_path,
                          timeout=120)
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr and "SparsekitError" in loud.stderr


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and sparsekit.__version__ in result.stdout


def test_parse_kwargs_reads_literals_and_keeps_strings():
    assert parse_kwargs("a=1, b=None,c=[1, 2],d=abc,e='x,y',f=(3, 4)") == {
        "a": 1, "b": None, "c": [1, 2], "d": "abc", "e": "x,y", "f": (3, 4)}
    assert parse_kwargs("") == {}
    with pytest.raises(ValueError, match="given twice"):
        parse_kwargs("a=1,a=2")


def test_torchvision_backbone_weights_are_not_downloaded(monkeypatch):
    pytest.importorskip("torchvision")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn:num_classes=3")
    assert isinstance(model, nn.Module)


def test_missing_torchvision_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    result = run("prune", "torchvision:resnet18", "--density", "0.1")
    assert result.exit_code == 1
    assert 'pip install "sparsekit[vision]"' in error_line(result)
