"""fit_weak under torchrun: 2 CPU processes with gloo (tests/ddp_worker.py is the launched script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsekit

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def torchrun(mode: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), mode, str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def test_ddp_two_ranks_match_single_process_and_only_rank0_writes(tmp_path):
    r = torchrun("train", tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights-0.pt")
    w1 = torch.load(tmp_path / "weights-1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP keeps ranks in lockstep
    # only rank 0 prints and writes: one line per epoch, one checkpoint
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.lstrip("[0123]: ").startswith("epoch ")]
    assert len(lines) == 3, r.stdout
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.pt", "history.json"]
    h0 = json.loads((tmp_path / "history-0.json").read_text())
    h1 = json.loads((tmp_path / "history-1.json").read_text())
    assert [s["train_loss"] for s in h0] == [s["train_loss"] for s in h1]  # all-reduced statistics

    # 2 ranks x batch 8 see the same samples per step as one process with batch 16 (same permutation)
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker as w
    finally:
        sys.path.remove(str(HERE))
    m = w.model()
    sparsekit.prune(m, method="er-erk", density=0.3, seed=7)
    h = sparsekit.fit_weak(m, w.data(), eval_data=w.data(40), epochs=3, lr=0.05, batch_size=16, device="cpu",
                           seed=3, progress=False)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6)
    assert [s["train_loss"] for s in h0] == pytest.approx(h.column("train_loss"), rel=1e-5)
    assert [s["eval_acc"] for s in h0] == pytest.approx(h.column("eval_acc"))
    for name, _p, mk in sparsekit.masked_parameters(m):
        assert bool((w0[name][~mk] == 0).all())


def test_ddp_ranks_with_different_masks_fail_loudly(tmp_path):
    r = torchrun("mismatch", tmp_path)
    assert r.returncode != 0
    for rank in (0, 1):
        msg = (tmp_path / f"error-{rank}.txt").read_text()
        assert "ranks hold different masks" in msg and "same method, density" in msg
    assert not (tmp_path / "weights-0.pt").exists()


def test_ddp_rigl_rewiring_makes_identical_decisions_on_every_rank(tmp_path):
    r = torchrun("rewire", tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m0 = torch.load(tmp_path / "masks-0.pt")
    m1 = torch.load(tmp_path / "masks-1.pt")
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    w0 = torch.load(tmp_path / "weights-0.pt")
    w1 = torch.load(tmp_path / "weights-1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # the masks did change: they differ from the ER masks the run started from
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker as w
    finally:
        sys.path.remove(str(HERE))
    er = sparsekit.prune(w.model(), method="er-erk", density=0.3, seed=7)
    assert any(not torch.equal(er.masks[k], m0[k]) for k in m0)
    assert json.loads((tmp_path / "updates-0.json").read_text()) > 0
