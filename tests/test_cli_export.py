"""``sparsekit export`` and ``sparsekit onnx-check`` (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import error_line, run, table_rows
from click.testing import Result
from models import mlp

import sparsekit

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sparsekit.formats.onnx import load_onnx_weights  # noqa: E402

MLP = "models:mlp"  # tests/models.py: 64-128-64-10, importable through conftest.py


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARSEKIT_DEBUG", raising=False)


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def ticket(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = mlp()
    t = sparsekit.prune(model, density=0.05, seed=7)
    path = tmp_path / "mlp.safetensors"
    sparsekit.save_ticket(t, path, weights="kept")
    return path, model


def test_export_prints_sizes_storage_and_parity(tmp_path: Path, ticket) -> None:
    path, model = ticket
    out = tmp_path / "mlp.onnx"
    result = ok("export", path, "--model", MLP, "--onnx", out, "--input-shape", "1,64")
    text = result.output
    assert f"wrote {out}" in text and "storage compact (smallest that passed verification)" in text
    rows = table_rows(text)
    assert {"dense", "sparse-initializer", "compact"} <= rows.keys()
    assert rows["compact"][-1] == "written" and rows["dense"][-1] == "larger"
    assert float(rows["compact"][3]) <= 6.0  # bytes per kept weight
    assert "parity, onnxruntime CPUExecutionProvider vs PyTorch" in text and ": ok" in text
    assert "inference is not faster" in text
    weights = load_onnx_weights(out)
    for fqn, p, _ in sparsekit.masked_parameters(model):  # the ticket's kept weights, zeros elsewhere
        assert np.array_equal(weights[fqn], p.detach().numpy()), fqn

    check = ok("onnx-check", out, "--runs", "5")
    assert "storage compact" in check.output and "session creation" in check.output
    assert "latency median" in check.output and "over 5 runs" in check.output
    assert "outputs: output [1, 10]" in check.output


def test_export_json_storage_opset_static_batch(tmp_path: Path, ticket) -> None:
    path, _ = ticket
    out = tmp_path / "m.onnx"
    result = ok("export", path, "--model", MLP, "--onnx", out, "--input-shape", "2x64", "--storage",
                "sparse-initializer", "--opset", "13", "--exporter", "torchscript", "--static-batch", "--json")
    d = json.loads(result.output)
    assert d["storage"] == "sparse-initializer" and d["opset"] == 13 and d["exporter"] == "torchscript"
    assert d["dynamic_batch"] is False and d["verified"] and d["file_bytes"] == out.stat().st_size
    assert set(d["sizes"]) == {"dense", "sparse-initializer"}
    assert d["bytes_per_kept_weight"]["sparse-initializer"] <= 12.0  # 12 in sparse layers, less in dense ones
    check = json.loads(ok("onnx-check", out, "--runs", "3", "--json").output)
    assert check["inputs"] == [["input", [2, 64], "float32"]] and len(check["latency_ms"]) == 3
    assert check["storage"]["storage"] == "sparse-initializer"
    # a fixed batch: another batch size does not fit
    assert "does not fit" in error_line(run("onnx-check", out, "--input-shape", "3,64"), 1)


def test_export_errors_are_one_line_and_leave_nothing(tmp_path: Path, ticket) -> None:
    path, _ = ticket
    out = tmp_path / "m.onnx"
    before = sorted(p.name for p in tmp_path.iterdir())
    line = error_line(run("export", path, "--model", MLP, "--onnx", out, "--input-shape", "1,63"), 1)
    assert "does not run on inputs of shape (1, 63)" in line and "--input-shape" in line
    line = error_line(run("export", path, "--model", "models:mlp:sizes=(64, 32, 10)", "--onnx", out,
                          "--input-shape", "1,64"), 1)
    assert "ticket does not fit this model" in line
    line = error_line(run("export", tmp_path / "nope.safetensors", "--model", MLP, "--onnx", out, "--input-shape",
                          "1,64"), 1)
    assert "does not exist" in line
    line = error_line(run("export", path, "--model", MLP, "--onnx", tmp_path / "no" / "m.onnx", "--input-shape",
                          "1,64"), 1)
    assert "does not exist; create it first" in line
    assert "not a shape" in run("export", path, "--model", MLP, "--onnx", out, "--input-shape", "1,a").output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    out.write_bytes(b"old")
    line = error_line(run("export", path, "--model", MLP, "--onnx", out, "--input-shape", "1,64"), 1)
    assert "--force" in line and out.read_bytes() == b"old"
    ok("export", path, "--model", MLP, "--onnx", out, "--input-shape", "1,64", "--force", "--no-verify")
    assert out.read_bytes() != b"old"


def test_onnx_check_errors(tmp_path: Path) -> None:
    assert "does not exist" in error_line(run("onnx-check", tmp_path / "nope.onnx"), 1)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert "is not an ONNX model" in error_line(run("onnx-check", tmp_path / "junk.onnx"), 1)
    assert run("onnx-check", tmp_path / "junk.onnx", "--runs", "0").exit_code == 1


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider available")
def test_cuda_provider_missing(tmp_path: Path, ticket) -> None:
    path, _ = ticket
    out = tmp_path / "m.onnx"
    line = error_line(run("export", path, "--model", MLP, "--onnx", out, "--input-shape", "1,64", "--provider",
                          "cuda"), 1)
    assert "onnxruntime-gpu" in line and not out.exists()
