"""Smoke test of benchmarks/bench_inference.py's core (tiny models), so the benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "benchmarks" / "bench_inference.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_run_tiny_grid_writes_rows_and_goals(bench, tmp_path):
    out = tmp_path / "r.json"
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bench.run(quick=True, size="tiny", models=["mlp", "mlp-block16", "mlp-fanin", "encoder", "cnn-tiny",
                                                         "vit-tiny"],
                        densities=[0.05], batches=[2], rounds=1, out=out, log=lines.append)
    assert json.loads(out.read_text())["settings"]["size"] == "tiny"
    assert [r["model"] for r in res["rows"]] == ["mlp", "mlp-block16", "mlp-fanin", "encoder", "cnn-tiny", "vit-tiny"]
    for r in res["rows"]:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0 and r["speedup"] > 0
        assert r["max_abs_error"] is None or r["max_abs_error"] < 1e-3  # verified against the dense model
        assert r["dense_bytes"] >= r["sparse_bytes"] > 0 and r["baseline_bytes"] > 0
        assert sum(r["kernels"].values()) == len(r["layers"])
    assert len(lines) == 1 + 6 + 3 + 1  # header, rows, goals, "wrote"
    assert set(res["goals"]) >= {"speedup_3x_met", "never_slower_met", "memory_met"}
    table = bench.markdown([res]).splitlines()
    assert len(table) == 2 + 6 and table[2].startswith("| mlp | 0.05 | ")


def test_goals_flag_slow_rows_and_memory(bench):
    row = {"model": "mlp", "density": 0.01, "batch": 1, "speedup": 5.0, "memory_ratio": 1.05}
    ok = bench.goals([row])
    assert ok["speedup_3x_met"] and ok["never_slower_met"] and ok["memory_met"]
    bad = bench.goals([dict(row, speedup=0.5, memory_ratio=3.0)])
    assert not bad["speedup_3x_met"] and not bad["never_slower_met"] and not bad["memory_met"]
    assert bad["slower_rows"] == [("mlp", 0.01, 1, 0.5)]
    assert not bench.goals([dict(row, model="resnet50")])["speedup_3x_met"]  # goal needs its rows
