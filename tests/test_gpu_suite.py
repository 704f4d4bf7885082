"""benchmarks/gpu_suite.py in its CPU smoke mode, so the GPU validation command cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks/gpu_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(ROOT / "benchmarks"))


def test_cpu_smoke_runs_every_section(suite, tmp_path, capsys):
    out = tmp_path / "gpu_suite.json"
    assert suite.main(["--cpu-smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke"
    sections = report["sections"]
    assert list(sections) == list(suite.SECTIONS)
    for name, r in sections.items():
        assert r["status"] == "ok" or r["status"].startswith("skipped: "), (name, r["status"])
    assert sections["masks"]["status"] == "ok" and sections["masks"]["checks"] > 50
    assert all(v["identical"] for v in sections["masks"]["prune"].values())
    for name in ("fit_weak", "fit_strong", "rewire"):
        assert sections[name]["status"] == "ok", sections[name]
    assert 0 < sections["fit_weak"]["models"]["mlp"]["ratio"] < 100
    assert sections["onnx"]["status"] == "ok" and all(p["passed"] for p in sections["onnx"]["parity"])
    assert "compute capability >= 8.0" in sections["semi_structured"]["status"]
    text = capsys.readouterr().out
    for name in suite.SECTIONS:  # the table names every section, skipped ones with their reason
        assert name in text
    assert "skipped" in text


def test_a_mask_mismatch_fails_the_suite(suite, tmp_path, monkeypatch):
    real = suite._unpack

    def flipped(hexstr, n):
        bits = real(hexstr, n)
        bits[0] = ~bits[0]
        return bits

    monkeypatch.setattr(suite, "_unpack", flipped)
    out = tmp_path / "bad.json"
    assert suite.main(["--cpu-smoke", "--sections", "masks", "--out", str(out)]) == 1
    status = json.loads(out.read_text())["sections"]["masks"]["status"]
    assert status.startswith("FAILED: AssertionError") and "rng-v1 bernoulli" in status
