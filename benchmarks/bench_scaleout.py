#!/usr/bin/env python
"""Step-time cost of sparsekit's masks where users train: one process, FSDP2 on 2 processes, HF Trainer.

Prints a table and writes JSON (``benchmarks/results/bench_scaleout.json``). Every ratio is masked /
dense, both measured in the same run:

1. **single process** and **FSDP2** (``fully_shard``, 2 CPU processes, gloo, launched with torchrun):
   an MLP (4 x Linear 1024, batch 64, AdamW), pruned ``er-balanced`` at density 0.05 before sharding.
   The dense and the masked model live in the same process and take turns, one step each per round,
   so machine noise hits both alike; the median step time of each is reported.
2. **HF Trainer**: a small BERT (4 layers, hidden 256) fine-tuned on synthetic data by
   ``transformers.Trainer``, with and without ``SparsekitCallback`` (density 0.05); trainers alternate in
   blocks of steps, and step times are taken between ``on_step_begin`` and ``on_step_end``.

On a GPU run with ``--device cuda`` for the single-process and Trainer numbers (FSDP2 then uses NCCL).

Usage::

    python benchmarks/bench_scaleout.py            # about 2 minutes on 2 idle CPU cores
    python benchmarks/bench_scaleout.py --quick    # fewer steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_scaleout.json"
DENSITY = 0.05


def _mlp():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def _interleaved(models, steps: int, warmup: int, batch, rank: int = 0, world: int = 1) -> dict[str, float]:
    """Median step time of each (model, optimizer), stepping them in turns."""
    import torch
    import torch.nn.functional as F

    x, y = batch
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    times: dict[str, list[float]] = {k: [] for k in models}
    keys = list(models)
    for r in range(warmup + steps):
        for k in keys[r % 2:] + keys[:r % 2]:
            m, opt = models[k]
            if world > 1:
                torch.distributed.barrier()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def _batch(device: str = "cpu"):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 1024, generator=g).to(device), torch.randint(0, 10, (64,), generator=g).to(device)


def single_process(steps: int, warmup: int, device: str) -> dict:
    import torch

    import sparsekit

    dense = _mlp().to(device)
    masked = _mlp().to(device)
    sparsekit.prune(masked, "er-balanced", density=DENSITY)
    models = {k: (m, torch.optim.AdamW(m.parameters(), lr=1e-3)) for k, m in (("dense", dense), ("masked", masked))}
    med = _interleaved(models, steps, warmup, _batch(device))
    return {"dense_ms": 1e3 * med["dense"], "masked_ms": 1e3 * med["masked"], "ratio": med["masked"] / med["dense"]}


def _fsdp_worker(out: str, steps: int, warmup: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import sparsekit

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(rank)
    mesh = init_device_mesh("cuda" if use_cuda else "cpu", (world,))
    models = {}
    for key in ("dense", "masked"):
        m = _mlp().to(device)
        if key == "masked":
            sparsekit.prune(m, "er-balanced", density=DENSITY)
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
        models[key] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3))
    med = _interleaved(models, steps, warmup, _batch(device), rank, world)
    if rank == 0:
        Path(out).write_text(json.dumps({"dense_ms": 1e3 * med["dense"], "masked_ms": 1e3 * med["masked"],
                                         "ratio": med["masked"] / med["dense"], "world": world,
                                         "backend": dist.get_backend()}))
    dist.destroy_process_group()


def fsdp2(steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "fsdp.json")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--_fsdp_worker", out, "--steps", str(steps), "--warmup", str(warmup)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            return {"error": (r.stdout + r.stderr)[-2000:]}
        return json.loads(Path(out).read_text())


def trainer(steps: int, blocks: int, device: str) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from sparsekit.integrations.hf import SparsekitCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 10_000

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(0, 1000, (64,), generator=g)
            return {"input_ids": ids, "attention_mask": torch.ones(64, dtype=torch.long), "labels": int(ids[0] % 2)}

    def run(sparse: bool, out: str) -> list[float]:
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=64, num_labels=2)
        clock = Clock()
        cbs = [clock] + ([SparsekitCallback("er-balanced", density=DENSITY)] if sparse else [])
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16, report_to=[],
                                 use_cpu=device == "cpu", save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, seed=0)
        Trainer(model=BertForSequenceClassification(cfg), args=args, train_dataset=Data(), callbacks=cbs).train()
        return clock.times[2:]  # the first steps warm up

    times: dict[str, list[float]] = {"dense": [], "masked": []}
    with tempfile.TemporaryDirectory() as tmp:
        for b in range(blocks):
            for key in (("dense", "masked") if b % 2 == 0 else ("masked", "dense")):
                times[key] += run(key == "masked", os.path.join(tmp, key))
    d, m = statistics.median(times["dense"]), statistics.median(times["masked"])
    return {"dense_ms": 1e3 * d, "masked_ms": 1e3 * m, "ratio": m / d, "steps_each": len(times["dense"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--_fsdp_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    steps = args.steps or (20 if args.quick else 60)
    if args._fsdp_worker:
        _fsdp_worker(args._fsdp_worker, steps, args.warmup)
        return 0
    import torch

    report = {"density": DENSITY, "steps": steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "device": args.device}
    report["single_process"] = single_process(steps, args.warmup, args.device)
    report["fsdp2_2proc"] = fsdp2(steps, args.warmup)
    if not args.skip_trainer:
        import transformers

        report["transformers"] = transformers.__version__
        report["hf_trainer"] = trainer(12 if args.quick else 25, 2 if args.quick else 4, args.device)
    print(f"{'setting':<22}{'dense ms':>10}{'masked ms':>11}{'ratio':>8}")
    for key in ("single_process", "fsdp2_2proc", "hf_trainer"):
        r = report.get(key)
        if r is None:
            continue
        if "error" in r:
            print(f"{key:<22} failed: {r['error'][-300:]}")
            continue
        print(f"{key:<22}{r['dense_ms']:>10.2f}{r['masked_ms']:>11.2f}{r['ratio']:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
