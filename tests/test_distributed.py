"""User training loops on 2 CPU processes (torchrun, gloo): FSDP2 and DDP (eager and torch.compile).

tests/dist_worker.py is the launched script; each mode is launched once (module-scoped fixtures) and
the tests below check what the ranks wrote against a single-process run on the same global batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsekit

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
sys.path.insert(0, str(HERE))
import dist_worker as w  # noqa: E402

sys.path.remove(str(HERE))


def _launch(mode: str, out: Path) -> tuple[dict, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "dist_worker.py"), mode, str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return tuple(torch.load(out / f"result-{rank}.pt", weights_only=False) for rank in (0, 1))  # type: ignore


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    return _launch("fsdp", tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return _launch("ddp", tmp_path_factory.mktemp("ddp"))


def _single_process(opt_fn, steps: int = w.STEPS):
    m = w.mlp()
    w.prune(m)
    w.train(m, opt_fn(m), 0, 1, steps)
    return m


def _assert_same_state(state: dict, model: torch.nn.Module) -> None:
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6)


def test_fsdp2_prune_then_shard_keeps_masks_and_matches_single_process(fsdp):
    r0, r1 = fsdp
    for r in (r0, r1):
        assert r["a_shards_masked"] is True  # every local shard, uneven ones included, is masked
        assert r["a_optim_masked"] is True  # AdamW state is zero where weights are pruned
    ref = _single_process(w.adamw)
    _assert_same_state(r0["a_state"], ref)
    for name, _p, mask in sparsekit.masked_parameters(ref):
        assert bool((r0["a_state"][name][~mask] == 0).all())
        assert torch.equal(r0["a_masks"][name], mask) and torch.equal(r1["a_masks"][name], mask)
        density = float(mask.float().mean())
        assert int((r0["a_state"][name] != 0).sum()) <= mask.sum()  # was 0.99 / 0.72 before: masks were lost
        assert density < 0.5


def test_fsdp2_shard_then_prune_draws_the_same_masks_and_trains_the_same(fsdp):
    r0, r1 = fsdp
    assert r0["d_masks_same"] and r1["d_masks_same"]
    assert r0["d_shards_masked"] and r1["d_shards_masked"]
    _assert_same_state(r0["d_state"], _single_process(w.adamw))


def test_fsdp2_state_dicts_and_dcp_reapply_masks(fsdp):
    for r in fsdp:
        assert r["set_state_masked"] and r["set_state_kept_ones"]  # set_model_state_dict of dense values
        assert r["load_state_masked"]  # plain load_state_dict of sharded tensors
        assert r["dcp_masked"] and r["dcp_kept_loaded"]  # a dense model's DCP checkpoint


def test_fsdp2_tickets_on_sharded_models(fsdp):
    for r in fsdp:
        assert r["ticket_of_same"] and r["applied_masked"]


def test_fsdp2_unsupported_uses_fail_loudly(fsdp):
    for r in fsdp:
        assert r["mismatch_error"].startswith("ranks hold different masks"), r["mismatch_error"]
        assert r["fit_weak_error"].startswith("the model is sharded"), r["fit_weak_error"]
        assert r["rewirer_error"].startswith("Rewirer does not support sharded models"), r["rewirer_error"]


@pytest.mark.parametrize("key", ["eager", "compiled"])
def test_user_ddp_loop_keeps_masks_identical_and_matches_single_process(ddp, key):
    r0, r1 = ddp
    ref = _single_process(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01))
    for k in r0[f"{key}_state"]:
        assert torch.equal(r0[f"{key}_state"][k], r1[f"{key}_state"][k])
    _assert_same_state(r0[f"{key}_state"], ref)
    for name, _p, mask in sparsekit.masked_parameters(ref):
        assert torch.equal(r0[f"{key}_masks"][name], mask) and torch.equal(r1[f"{key}_masks"][name], mask)
        assert bool((r0[f"{key}_state"][name][~mask] == 0).all())


def test_rewirer_in_user_ddp_loop_decides_the_same_on_every_rank(ddp):
    r0, r1 = ddp
    er = w.prune(w.mlp()).masks
    for k, mask in r0["rewired_masks"].items():
        assert torch.equal(mask, r1["rewired_masks"][k])
        assert int(mask.sum()) == int(er[k].sum())  # RigL keeps the count
        assert bool((r0["rewired_state"][k][~mask] == 0).all())
    assert any(not torch.equal(er[k], r0["rewired_masks"][k]) for k in er)  # it did rewire
    for k in r0["rewired_state"]:
        assert torch.equal(r0["rewired_state"][k], r1["rewired_state"][k])


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    pytest.importorskip("lightning")
    pytest.importorskip("accelerate")
    return _launch("stacks", tmp_path_factory.mktemp("stacks"))


def test_lightning_ddp_strategy_rewires_identically_on_every_rank(stacks):
    from lightning_helpers import Net

    r0, r1 = stacks
    er = sparsekit.prune(Net(), density=0.2, seed=3).masks
    for k, mask in r0["lightning_masks"].items():
        assert torch.equal(mask, r1["lightning_masks"][k])
        assert int(mask.sum()) == int(er[k].sum())
        assert bool((r0["lightning_state"][k][~mask] == 0).all())
    assert any(not torch.equal(er[k], r0["lightning_masks"][k]) for k in er)  # RigL did rewire
    assert all(torch.equal(v, r1["lightning_state"][k]) for k, v in r0["lightning_state"].items())
    assert r0["lightning_ck_has_ticket"]


def test_accelerate_recipe_matches_single_process(stacks):
    r0, r1 = stacks
    assert r0["accelerate_world"] == 2
    ref = _single_process(w.adamw)
    _assert_same_state(r0["accelerate_state"], ref)
    for name, _p, mask in sparsekit.masked_parameters(ref):
        assert bool((r0["accelerate_state"][name][~mask] == 0).all())
    assert all(torch.equal(v, r1["accelerate_state"][k]) for k, v in r0["accelerate_state"].items())
