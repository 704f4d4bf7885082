#!/usr/bin/env python
"""Benchmark of ``sparsekit.rewire`` (RigL): epoch time against ``fit_weak``, and the cost of one update.

1. **Epoch time**: ``sparsekit:resnet18`` (CIFAR form) pruned with er-balanced at density 0.01, CPU,
   batch 32 of synthetic 3x32x32 data, epochs of ``--steps`` steps (default 100 = one RigL update per
   epoch at ``update_every=100``, the paper's setting). ``rewire(method="rigl")`` and ``fit_weak``
   alternate in rounds; each variant starts from the same pruned model. Reported: median epoch
   seconds and the ratio rewire / fit_weak (goal <= 1.05). Rounds disturbed by other processes are
   dropped.
2. **One RigL update** on ``sparsekit:resnet50`` (23.5M weights) pruned at density 0.01, with a
   captured dense gradient: median seconds of ``Rewirer.update()`` over ``--update-repeats`` runs.

GPU numbers (same measurements on CUDA, bf16) when a GPU is available. Prints a table and writes
JSON (``benchmarks/results/bench_rewire.json``).

Usage::

    python benchmarks/bench_rewire.py            # ~5 min on 2 idle CPU cores
    python benchmarks/bench_rewire.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_prune import Foreign, is_noisy, machine_info, make_console, wait_for_quiet  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.data import synthetic  # noqa: E402
from sparsekit.models import get_model  # noqa: E402

DEFAULT_OUT = HERE / "results" / "bench_rewire.json"
GOAL = 1.05


def pruned(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = get_model(name, num_classes=10)
    sparsekit.prune(m, method="er-balanced", density=0.01, seed=0)
    return m.to(device)


def epoch_seconds(variant: str, data, *, batch: int, device: str, amp, update_every: int) -> tuple[float, float, float]:
    model = pruned("resnet18", device)
    f = Foreign()
    kw = dict(epochs=1, batch_size=batch, device=device, amp=amp, progress=False, num_workers=0)
    if variant == "rewire":
        # stop_at=1: the update at step 100 of a 100-step epoch happens
        t = sparsekit.rewire(model, data, method="rigl", update_every=update_every, stop_at=1.0, **kw)
        h = t.history
    else:
        h = sparsekit.fit_weak(model, data, **kw)
    foreign, wall = f.stop()
    return h[-1].seconds, foreign, wall


def update_seconds(device: str, repeats: int) -> dict:
    model = pruned("resnet50", device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r = sparsekit.Rewirer(model, opt, "rigl", total_steps=10**6, update_every=100)
    times = []
    for i in range(repeats):
        for _n, p, _m in sparsekit.masked_parameters(model):
            p._sparsekit_mask.captured = torch.randn_like(p)
        r.step_count = 100 * (i + 1)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r.update()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    n = sum(p.numel() for _n, p, _m in sparsekit.masked_parameters(model))
    return {"device": device, "model": "resnet50", "masked_weights": n, "median_s": statistics.median(times),
            "times_s": times, "kept": r.updates[-1]["dropped"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch, default 100 (quick: 20)")
    ap.add_argument("--update-repeats", type=int, default=5)
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--plain", action="store_true")
    args = ap.parse_args(argv)
    console = make_console(args.plain)
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (20 if args.quick else 100)
    results: dict = {"machine": machine_info(), "goal": GOAL, "epochs": [], "updates": []}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        batch = 32 if device == "cpu" else 128
        amp = None if device == "cpu" else "bf16"
        data = synthetic(steps * batch, shape=(3, 32, 32), num_classes=10, seed=0)
        secs: dict[str, list[float]] = {"rewire": [], "fit_weak": []}
        dropped = 0
        for r in range(rounds):
            if device == "cpu":
                wait_for_quiet(args.quiet_wait)
            got, noisy = {}, False
            for v in (("rewire", "fit_weak") if r % 2 == 0 else ("fit_weak", "rewire")):
                s, foreign, wall = epoch_seconds(v, data, batch=batch, device=device, amp=amp, update_every=steps)
                noisy = noisy or (device == "cpu" and is_noisy(foreign, wall))
                got[v] = s
            if noisy:
                dropped += 1
                continue
            for v, s in got.items():
                secs[v].append(s)
            console.print(f"  {device} round {r + 1}/{rounds}: rewire/fit_weak {got['rewire'] / got['fit_weak']:.3f}")
        if not secs["rewire"]:
            raise SystemExit("every round was disturbed by other processes; run on an idle machine")
        med = {v: statistics.median(x) for v, x in secs.items()}
        results["epochs"].append({"device": device, "batch": batch, "steps_per_epoch": steps, "update_every": steps,
                                  "median_epoch_s": med, "ratio": med["rewire"] / med["fit_weak"],
                                  "rounds": rounds, "rounds_dropped_noisy": dropped, "epoch_s": secs})
        results["updates"].append(update_seconds(device, 2 if args.quick else args.update_repeats))
    console.print("")
    console.print(f"{'device':<7}{'batch':>6}{'steps':>7}  {'rewire s/epoch':>15}{'fit_weak s/epoch':>17}"
                  f"{'ratio':>8}{'goal':>6}")
    for e in results["epochs"]:
        m = e["median_epoch_s"]
        console.print(f"{e['device']:<7}{e['batch']:>6}{e['steps_per_epoch']:>7}  {m['rewire']:>15.2f}"
                      f"{e['median_epoch_s']['fit_weak']:>17.2f}{e['ratio']:>8.3f}{GOAL:>6.2f}")
    for u in results["updates"]:
        console.print(f"one RigL update, {u['model']} ({u['masked_weights']:,} masked weights) on {u['device']}: "
                      f"{u['median_s']:.3f} s (median of {len(u['times_s'])})")
    if not torch.cuda.is_available():
        console.print("no CUDA device in this run: GPU part not measured")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
