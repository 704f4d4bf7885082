"""Launched by tests/test_distributed.py through torchrun (2 processes, gloo, CPU): user-written loops.

argv: MODE OUT_DIR. Every rank writes ``result-RANK.pt`` (a dict of tensors and flags) for the test to check.
* "fsdp": FSDP2 prune-then-shard and shard-then-prune training with AdamW, state-dict / DCP round trips,
  tickets on sharded models, and the errors (ranks with different masks, fit_weak on a sharded model;
  FSDP1 needs an accelerator: see test_attach.py for the replaced-Parameter error);
* "ddp": DistributedDataParallel in a user loop, eager and torch.compile'd, and Rewirer under user DDP;
* "stacks": Lightning's DDP strategy with SparsekitLightningCallback (RigL) and an Accelerate loop.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import sparsekit
from sparsekit.errors import SparsekitError

STEPS = 3
GLOBAL_BATCH = 16


def mlp() -> nn.Module:
    torch.manual_seed(0)  # 63 and 5 rows: uneven shards over 2 ranks
    return nn.Sequential(nn.Linear(20, 63), nn.ReLU(), nn.Linear(63, 64), nn.ReLU(), nn.Linear(64, 5))


def batches(n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(GLOBAL_BATCH, 20, generator=g), torch.randint(0, 5, (GLOBAL_BATCH,), generator=g))
            for _ in range(n)]


def prune(model: nn.Module, seed: int = 7) -> sparsekit.Ticket:
    return sparsekit.prune(model, method="er-erk", density=0.3, seed=seed)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def local_part(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return x.chunk(world)[rank]


def train(model: nn.Module, opt: torch.optim.Optimizer, rank: int, world: int, steps: int = STEPS) -> None:
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(local_part(x, rank, world)), local_part(y, rank, world))
        opt.zero_grad()
        loss.backward()
        opt.step()


def shard(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def shards_masked(model: nn.Module, masks: dict[str, torch.Tensor], rank: int, world: int) -> bool:
    """Every rank-local shard is zero where the full mask, cut as torch.chunk cuts rows, is False."""
    ok = True
    for name, p in model.named_parameters():
        if name in masks:
            mine = local_part(masks[name], rank, world)
            ok = ok and bool((p.to_local()[~mine] == 0).all()) and tuple(p.to_local().shape) == tuple(mine.shape)
    return ok


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def expect_error(fn, *words: str) -> str:
    try:
        fn()
    except SparsekitError as e:
        msg = str(e)
        return msg if all(w in msg for w in words) else f"WRONG MESSAGE: {msg}"
    return "NO ERROR"


def fsdp(out: str, rank: int, world: int) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    res: dict = {}

    # 1. prune, then shard, then train with AdamW in a plain loop
    a = mlp()
    ticket = prune(a)
    masks = {k: v.clone() for k, v in ticket.masks.items()}
    shard(a, mesh)
    if rank == 0:  # one rank alone may look at the ticket (no collective hides in here)
        assert sparsekit.ticket_of(a) is ticket
    opt = adamw(a)
    train(a, opt, rank, world)
    res["a_shards_masked"] = shards_masked(a, masks, rank, world)
    res["a_state"] = full_state(a)
    res["a_masks"] = {n: m for n, _p, m in sparsekit.masked_parameters(a)}
    res["a_optim_masked"] = all(
        bool((local_part(masks[n], rank, world).logical_not() & (opt.state[p]["exp_avg"].to_local() != 0)).sum() == 0)
        for n, p in a.named_parameters() if n in masks)

    # 2. state dicts: sharded get/set, plain load_state_dict and DCP all keep the masks
    sd = get_model_state_dict(a)
    ones = {k: torch.ones_like(v) for k, v in sd.items()}
    set_model_state_dict(a, ones)
    res["set_state_masked"] = shards_masked(a, masks, rank, world)
    res["set_state_kept_ones"] = all(bool((p.to_local()[local_part(masks[n], rank, world)] == 1).all())
                                     for n, p in a.named_parameters() if n in masks)
    a.load_state_dict({k: torch.full_like(v, 2.0) for k, v in sd.items()})
    res["load_state_masked"] = shards_masked(a, masks, rank, world)
    dense = shard(mlp(), mesh)  # a dense model's checkpoint loaded into the pruned sharded model
    dcp.save(get_model_state_dict(dense), checkpoint_id=os.path.join(out, "dcp"))
    target = get_model_state_dict(a)
    dcp.load(target, checkpoint_id=os.path.join(out, "dcp"))
    set_model_state_dict(a, target)
    res["dcp_masked"] = shards_masked(a, masks, rank, world)
    res["dcp_kept_loaded"] = all(
        torch.equal(p.to_local()[local_part(masks[n], rank, world)], q.to_local()[local_part(masks[n], rank, world)])
        for (n, p), q in zip(a.named_parameters(), dense.parameters(), strict=True) if n in masks)

    # 3. tickets of sharded models: rank 0 writes, every rank applies to a sharded model
    t = sparsekit.ticket_of(a)
    res["ticket_of_same"] = t is not None and all(torch.equal(t.masks[k], masks[k]) for k in masks)
    path = os.path.join(out, "sharded.safetensors")
    if rank == 0:
        sparsekit.save_ticket(t, path)
    dist.barrier()
    c = shard(mlp(), mesh)
    sparsekit.apply_ticket(c, path)
    opt_c = adamw(c)
    train(c, opt_c, rank, world)
    res["applied_masked"] = shards_masked(c, masks, rank, world)

    # 4. shard, then prune (masks drawn for the full weights), then train: same result as 1.
    d = shard(mlp(), mesh)
    td = prune(d)
    res["d_masks_same"] = all(torch.equal(td.masks[k], masks[k]) for k in masks)
    train(d, adamw(d), rank, world)
    res["d_shards_masked"] = shards_masked(d, masks, rank, world)
    res["d_state"] = full_state(d)

    # 5. what is not supported fails loudly instead of training dense
    e = mlp()
    prune(e, seed=rank)  # a different mask on every rank
    shard(e, mesh)
    opt_e = adamw(e)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(e(local_part(x, rank, world)), local_part(y, rank, world)).backward()
    res["mismatch_error"] = expect_error(opt_e.step, "ranks hold different masks")
    res["rewirer_error"] = expect_error(lambda: sparsekit.Rewirer(d, adamw(d), total_steps=4), "sharded")
    res["fit_weak_error"] = expect_error(
        lambda: sparsekit.fit_weak(d, torch.utils.data.TensorDataset(x, y), epochs=1, progress=False),
        "sharded", "DistributedDataParallel")
    return res


def ddp(out: str, rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    res: dict = {}
    for compiled in (False, True):
        m = mlp()
        prune(m)
        net = DDP(m)
        sparsekit.check_same_masks(m)
        if compiled:
            net = torch.compile(net)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        train(net, opt, rank, world)
        key = "compiled" if compiled else "eager"
        res[f"{key}_state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        res[f"{key}_masks"] = {n: mk for n, _p, mk in sparsekit.masked_parameters(m)}

    # Rewirer (RigL) in a user DDP loop: every rank makes the same decisions
    m = mlp()
    prune(m)
    net = DDP(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    rw = sparsekit.Rewirer(m, opt, method="rigl", total_steps=8, update_every=2, seed=1)
    for x, y in batches(8):
        loss = nn.functional.cross_entropy(net(local_part(x, rank, world)), local_part(y, rank, world))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rw.step()
    res["rewired_masks"] = dict(rw.ticket().masks)
    res["rewired_state"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
    return res


def stacks(out: str, rank: int, world: int) -> dict:
    """Lightning's DDP strategy and Accelerate, both on 2 processes."""
    import lightning.pytorch as L
    from accelerate import Accelerator
    from lightning_helpers import Net, loader, trainer

    from sparsekit.integrations.lightning import CHECKPOINT_KEY, SparsekitLightningCallback

    res: dict = {}
    net = Net()
    ck = L.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ck"), every_n_train_steps=4, save_top_k=-1,
                                     filename="{step}")
    trainer(out, 4, [SparsekitLightningCallback(density=0.2, seed=3, rewire="rigl",
                                                rewire_options={"update_every": 2}), ck],
            strategy="ddp", devices=world, use_distributed_sampler=True).fit(net, loader(64))
    res["lightning_masks"] = {n: m for n, _p, m in sparsekit.masked_parameters(net)}
    res["lightning_state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    dist.barrier()
    res["lightning_ck_has_ticket"] = CHECKPOINT_KEY in torch.load(os.path.join(out, "ck", "step=4.ckpt"),
                                                                  weights_only=False)

    # Accelerate: prune before prepare; nothing else changes in the loop
    accelerator = Accelerator(cpu=True)
    model = mlp()
    sparsekit.prune(model, method="er-erk", density=0.3, seed=7)
    opt = adamw(model)
    model, opt = accelerator.prepare(model, opt)
    for x, y in batches():
        loss = nn.functional.cross_entropy(model(local_part(x, rank, world)), local_part(y, rank, world))
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
    inner = accelerator.unwrap_model(model)
    res["accelerate_state"] = {k: v.detach().clone() for k, v in inner.state_dict().items()}
    res["accelerate_world"] = accelerator.num_processes
    return res


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if mode != "stacks":  # Lightning and Accelerate start the process group themselves
        dist.init_process_group("gloo")
    try:
        if mode == "stacks":
            res = stacks(out, rank, world)
        else:
            res = {"fsdp": fsdp, "ddp": ddp}[mode](out, rank, world)
        torch.save(res, os.path.join(out, f"result-{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
