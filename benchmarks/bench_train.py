#!/usr/bin/env python
"""Benchmark of ``sparsekit.fit_weak``: masked versus dense step time, and GPU throughput.

1. **CPU**: ``sparsekit:resnet18`` (CIFAR form, 10 classes), batch 32 of 3x32x32 synthetic data, the
   paper's SGD (lr 0.1, momentum 0.9, wd 5e-4). The same ``fit_weak`` loop trains the model pruned
   with er-balanced at density 0.01 and the dense model. Runs alternate (masked, dense, dense, masked,
   ...) in short ``fit_weak`` calls of ``--steps`` steps each; a callback records the wall time of every
   optimizer step; the first ``--warmup`` steps of each call are dropped (the first step cleans the
   optimizer state once). Reported: median step time per variant and the ratio masked / dense (goal
   <= 1.05), plus the median of the per-round ratios. Rounds disturbed by other processes (> 5% of the
   machine, measured from /proc/stat) are dropped and counted.
2. **GPU** (only when CUDA is available): ``sparsekit:vgg16`` and ``sparsekit:resnet18`` at batch 128,
   bf16 autocast, synthetic CIFAR-shaped data: masked / dense step time (goal <= 1.03) and images/s.

Prints tables and writes JSON (``benchmarks/results/bench_train.json``, ``--out``).

Usage::

    python benchmarks/bench_train.py            # ~4 min on 2 idle CPU cores (plus the GPU part, if any)
    python benchmarks/bench_train.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_prune import Foreign, is_noisy, machine_info, make_console, wait_for_quiet  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.data import synthetic  # noqa: E402
from sparsekit.models import get_model  # noqa: E402
from sparsekit.train import Callback  # noqa: E402

DEFAULT_OUT = HERE / "results" / "bench_train.json"
warnings.filterwarnings("ignore", message="fit_weak: the model carries no sparsekit masks")  # the dense baseline
METHOD, DENSITY = "er-balanced", 0.01
GOAL_CPU, GOAL_GPU = 1.05, 1.03


class StepTimer(Callback):
    """Wall time of every optimizer step (CUDA-synchronised on GPUs)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.times: list[float] = []
        self._last = 0.0

    def on_train_start(self, state) -> None:
        self._sync()
        self._last = time.perf_counter()

    def on_step_end(self, state) -> None:
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def build(name: str, masked: bool, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = get_model(name, num_classes=10)
    if masked:
        sparsekit.prune(m, method=METHOD, density=DENSITY, seed=0)
    return m.to(device)


def one_call(model, data, *, steps: int, batch: int, device: str, amp) -> tuple[list[float], float, float, float]:
    """Step times of one fit_weak call, its images/s, foreign CPU seconds during it and its wall time."""
    timer = StepTimer(device)
    f = Foreign()
    h = sparsekit.fit_weak(model, data, epochs=1, batch_size=batch,
                           device=device, amp=amp, progress=False, callbacks=[timer], num_workers=0)
    foreign, wall = f.stop()
    return timer.times, h[-1].images_per_s, foreign if not device.startswith("cuda") else 0.0, wall


def compare(name: str, *, batch: int, steps: int, warmup: int, rounds: int, device: str, amp, console,
            quiet_wait: float) -> dict:
    data = synthetic(steps * batch, shape=(3, 32, 32), num_classes=10, seed=0)
    models = {"masked": build(name, True, device), "dense": build(name, False, device)}
    times: dict[str, list[float]] = {"masked": [], "dense": []}
    ips: dict[str, list[float]] = {"masked": [], "dense": []}
    round_ratios, dropped = [], 0
    for r in range(rounds):
        order = ("masked", "dense") if r % 2 == 0 else ("dense", "masked")
        if device == "cpu":
            wait_for_quiet(quiet_wait)
        got, noisy = {}, False
        for v in order:
            ts, rate, foreign, wall = one_call(models[v], data, steps=steps, batch=batch, device=device, amp=amp)
            noisy = noisy or (device == "cpu" and is_noisy(foreign, wall))
            got[v] = (ts[warmup:], rate)
        if noisy:
            dropped += 1
            continue
        for v, (ts, rate) in got.items():
            times[v].extend(ts)
            ips[v].append(rate)
        round_ratios.append(statistics.median(got["masked"][0]) / statistics.median(got["dense"][0]))
        console.print(f"  {name} round {r + 1}/{rounds}: masked/dense {round_ratios[-1]:.3f}")
    if not round_ratios:
        raise SystemExit("every round was disturbed by other processes; run on an idle machine")
    med = {v: statistics.median(t) for v, t in times.items()}
    return {
        "model": name, "device": device, "batch": batch, "amp": str(amp), "method": METHOD, "density": DENSITY,
        "steps_per_call": steps, "warmup_dropped": warmup, "rounds": rounds, "rounds_dropped_noisy": dropped,
        "median_step_s": med, "ratio": med["masked"] / med["dense"],
        "median_round_ratio": statistics.median(round_ratios), "round_ratios": round_ratios,
        "images_per_s": {v: batch / med[v] for v in med},  # from the median step time
        "fit_weak_images_per_s": {v: statistics.median(x) for v, x in ips.items()},  # whole calls, warm-up included
        "step_times_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 4 steps")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rounds", type=int, default=None, help="CPU rounds (default 8)")
    ap.add_argument("--steps", type=int, default=None, help="steps per fit_weak call (default 12)")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each call")
    ap.add_argument("--gpu-rounds", type=int, default=6)
    ap.add_argument("--gpu-steps", type=int, default=60)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait for an idle machine")
    ap.add_argument("--plain", action="store_true", help="plain text output")
    args = ap.parse_args(argv)
    console = make_console(args.plain)
    rounds = args.rounds or (2 if args.quick else 8)
    steps = args.steps or (4 if args.quick else 12)
    results: dict = {"machine": machine_info(), "goals": {"cpu_ratio": GOAL_CPU, "gpu_ratio": GOAL_GPU},
                     "cpu": None, "gpu": []}

    if not args.skip_cpu:
        console.print(f"CPU: resnet18 batch 32, {rounds} rounds x {steps} steps per variant")
        results["cpu"] = compare("resnet18", batch=32, steps=steps, warmup=min(args.warmup, steps - 1),
                                 rounds=rounds, device="cpu", amp=None, console=console, quiet_wait=args.quiet_wait)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        g_rounds = 2 if args.quick else args.gpu_rounds
        g_steps = 20 if args.quick else args.gpu_steps
        for name in ("vgg16", "resnet18"):
            console.print(f"GPU ({torch.cuda.get_device_name()}): {name} batch 128 bf16")
            results["gpu"].append(compare(name, batch=128, steps=g_steps, warmup=min(10, g_steps - 1),
                                          rounds=g_rounds, device="cuda", amp="bf16", console=console,
                                          quiet_wait=0))
        results["gpu_device"] = torch.cuda.get_device_name()
    else:
        results["gpu_note"] = "no CUDA device in this run: GPU part not measured"

    console.print("")
    console.print(f"{'device':<8}{'model':<10}{'batch':>6}  {'masked s/step':>14}{'dense s/step':>14}"
                  f"{'ratio':>8}{'round med':>10}{'goal':>7}  {'masked img/s':>13}{'dense img/s':>12}  ok")
    rows = ([results["cpu"]] if results["cpu"] else []) + results["gpu"]
    for r in rows:
        goal = GOAL_CPU if r["device"] == "cpu" else GOAL_GPU
        console.print(
            f"{r['device']:<8}{r['model']:<10}{r['batch']:>6}  {r['median_step_s']['masked']:>14.4f}"
            f"{r['median_step_s']['dense']:>14.4f}{r['ratio']:>8.3f}{r['median_round_ratio']:>10.3f}{goal:>7.2f}  "
            f"{r['images_per_s']['masked']:>13,.0f}{r['images_per_s']['dense']:>12,.0f}  "
            f"{'yes' if r['ratio'] <= goal else 'NO'}")
    if not results["gpu"]:
        console.print(results["gpu_note"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
