"""The examples run and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_quickstart_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples/quickstart.py"), "--epochs", "4", "--density", "0.1"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "masked weights still zero: True" in out
    acc = float(re.search(r"er-balanced at density 0.1: ([0-9.]+)", out).group(1))
    assert acc > 0.5  # digits, 4 epochs: far above chance (0.1)


def test_tickets_example_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples/tickets.py"), "--epochs", "2", "--out-dir",
                          str(tmp_path)], capture_output=True, text=True, check=True, timeout=300,
                         cwd=ROOT / "examples").stdout
    assert "masks rebuilt from the seed are identical: True" in out
    assert "identical logits: True" in out
    assert (tmp_path / "mlp-er.safetensors").stat().st_size < 4096


def test_own_loop_example_keeps_masks():
    out = subprocess.run([sys.executable, str(ROOT / "examples/own_loop.py"), "--epochs", "3"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "AdamW: test accuracy" in out
    assert out.count("masked weights still zero: True") == 3
    assert "after a manual write: masked weights zero: False" in out  # the example's check can fail


def test_weak_digits_example_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples/weak_digits.py"), "--methods", "er-erk", "er-balanced",
                          "--densities", "0.05", "--seeds", "1", "--epochs", "12", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("0.05")]
    assert [r[1] for r in rows] == ["er-erk", "er-balanced"]
    import json

    runs = json.loads((tmp_path / "r.json").read_text())
    assert len(runs) == 4 and all(r["test_acc"] > 0.5 for r in runs)


def test_strong_and_rewire_examples_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples/strong_digits.py"), "--width", "64", "--seeds", "1",
                          "--levels", "1", "--epochs-per-level", "2", "--sources", "0.5", "1", "--finals", "0.1"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "ER 0.5" in out and "dense" in out and "-> 0.1" in out and ("(+" in out or "(-" in out)
    out = subprocess.run([sys.executable, str(ROOT / "examples/rewire_digits.py"), "--methods", "er-erk", "--seeds",
                          "1", "--epochs", "3", "--update-every", "5", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "er-erk" in out
    import json

    runs = json.loads((tmp_path / "r.json").read_text())
    assert sorted(r["training"] for r in runs) == ["fixed", "rigl", "set"]


def test_theory_walkthrough_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples/theory_walkthrough.py"), "--trials", "40"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "[2] Theorem 2.5 at p = 0.5, delta = 0.1:" in out
    float64 = float(re.search(r"in float64: max \|f_T\(x\) - f_S\(x\)\| = ([0-9.e+-]+)", out).group(1))
    assert float64 < 1e-10
    accs = re.search(r"test accuracy ([0-9.]+) \(target ([0-9.]+)\)", out)
    assert accs.group(1) == accs.group(2)
    assert "[5] under-wide source: cannot place target weight W^(" in out
    assert "the exact necessary width is" in out
