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
