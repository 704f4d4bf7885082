#!/usr/bin/env python
"""Issue 17: which edge-popup conventions close the gap between ER and dense sources (paper §2.1, Table 1).

Runs ``sparsekit.fit_strong`` on scikit-learn's digits (MLP 64-1024-1024-10 or a small conv net),
final density 0.1, 3 levels x 10 epochs, batch 64, one factor changed at a time against a base
configuration, for ER(0.5) and dense sources. Every run is appended to a JSON-lines file (runs
already there are skipped, so the script can be stopped and resumed); ``--table`` prints the mean
test accuracy per (config, source), its difference to the base config (the conv net's configs: to
``conv``) and the ER - dense gap, in points.

Factors that ``fit_strong`` does not expose as arguments are swapped in here (never in the library):

* ``scale=source``: the init's fan is ``fan_in * er_density`` (the ER source's fan-in) instead of the
  final ticket's ``fan_in * final density`` (``scale_fan=True``) or the dense ``fan_in`` (``False``);
* ``bias=random``: PyTorch's random biases kept (frozen) instead of zero biases;
* ``anneal=from-source``: the first level trains at the source density (levels interpolate
  geometrically from the source to the final count, the first one *at* the source);
* ``score_scale=s``: scores multiplied by ``s`` after their init.

Usage::

    python benchmarks/strong_investigation.py --configs base scale-none --seeds 0 1 2
    python benchmarks/strong_investigation.py --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sparsekit
import sparsekit.train.strong as strong_mod
from sparsekit.data import digits
from sparsekit.models import mlp

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "strong_investigation.jsonl"

#: the base configuration; every other config changes one or two entries
BASE: dict[str, Any] = {"init": "signed-kaiming-constant", "scale_fan": True, "scale": "final", "bias": "zero",
                        "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "schedule": "cosine",
                        "score_init": "kaiming-uniform", "score_scale": 1.0, "anneal": "geometric",
                        "model": "mlp", "levels": 3, "epochs_per_level": 10, "batch_size": 64, "density": 0.1,
                        "er_method": "er-uniform"}
CONFIGS: dict[str, dict[str, Any]] = {
    "base": {},
    "scale-none": {"scale_fan": False, "scale": "none"},
    "scale-source": {"scale": "source"},
    "bias-random": {"bias": "random"},
    "bias-random-scale-none": {"bias": "random", "scale_fan": False, "scale": "none"},
    "kaiming-normal": {"init": "kaiming-normal"},
    "kaiming-normal-scale-none": {"init": "kaiming-normal", "scale_fan": False, "scale": "none"},
    "lr-0.05": {"lr": 0.05},
    "lr-0.2": {"lr": 0.2},
    "lr-0.5": {"lr": 0.5},
    "wd-0": {"weight_decay": 0.0},
    "wd-1e-4": {"weight_decay": 1e-4},
    "wd-1e-3": {"weight_decay": 1e-3},
    "constant-lr": {"schedule": "constant"},
    "anneal-from-source": {"anneal": "from-source"},
    "score-uniform": {"score_init": "uniform"},
    "score-x0.1": {"score_scale": 0.1},
    "score-x10": {"score_scale": 10.0},
    "levels-1": {"levels": 1, "epochs_per_level": 30},
    "conv": {"model": "conv"},
    "conv-scale-none": {"model": "conv", "scale_fan": False, "scale": "none"},
    "conv-long": {"model": "conv", "epochs_per_level": 20},
    "conv-lr-0.05": {"model": "conv", "lr": 0.05},
    "conv-constant-lr": {"model": "conv", "schedule": "constant"},
    "conv-erk": {"model": "conv", "er_method": "erk"},
    "conv-balanced": {"model": "conv", "er_method": "er-balanced"},
}


def conv_net() -> nn.Module:
    """A small conv net for 1x8x8 digits: 3 conv-BN-ReLU blocks (32, 64, 64), global pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class _Patched:
    """Swaps in the factors fit_strong does not expose (module docstring); undone on exit."""

    def __init__(self, cfg: dict[str, Any], er_density: float) -> None:
        self.cfg, self.er_density = cfg, er_density

    def __enter__(self) -> _Patched:
        cfg, er_d = self.cfg, self.er_density
        self.saved = (strong_mod.init_weight, strong_mod.level_counts, strong_mod.EdgePopup)
        orig_init, orig_counts, orig_algo = self.saved
        if cfg["scale"] == "source":
            def init_weight(*a: Any, **kw: Any) -> torch.Tensor:
                kw["density"], kw["scale_fan"] = er_d, True
                return orig_init(*a, **kw)
            strong_mod.init_weight = init_weight
        if cfg["anneal"] == "from-source":
            def level_counts(source_nnz: int, final_k: int, levels: int) -> list[int]:
                if levels == 1:
                    return [final_k]
                return [source_nnz] + orig_counts(source_nnz, final_k, levels - 1)
            strong_mod.level_counts = level_counts
        if cfg["score_scale"] != 1.0:
            scale = cfg["score_scale"]

            class Scaled(orig_algo):  # type: ignore[misc, valid-type]
                def setup(self, model: nn.Module, device: torch.device) -> None:
                    super().setup(model, device)
                    with torch.no_grad():
                        for s in self.scores:
                            s.mul_(scale)
            strong_mod.EdgePopup = Scaled
        return self

    def __exit__(self, *exc: object) -> None:
        strong_mod.init_weight, strong_mod.level_counts, strong_mod.EdgePopup = self.saved


def one_run(cfg: dict[str, Any], er_density: float, seed: int, data: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(seed)
    if cfg["model"] == "mlp":
        model, train, test = mlp(hidden=(1024, 1024)), data["flat"][0], data["flat"][1]
    else:
        model, train, test = conv_net(), data["img"][0], data["img"][1]
    if cfg["bias"] == "zero":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                    m.bias.zero_()
    t0 = time.perf_counter()
    with _Patched(cfg, er_density), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ticket = sparsekit.fit_strong(
            model, train, eval_data=test, density=cfg["density"], er_density=er_density, levels=cfg["levels"],
            er_method=cfg["er_method"],
            epochs_per_level=cfg["epochs_per_level"], init=cfg["init"], scale_fan=cfg["scale_fan"],
            score_init=cfg["score_init"], lr=cfg["lr"], momentum=cfg["momentum"],
            weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], schedule=cfg["schedule"],
            seed=seed, device="cpu", amp=None, progress=False, num_workers=0)
    h = ticket.history
    return {"test_acc": h[-1].eval_acc, "best_acc": max(h.column("eval_acc")), "train_loss": h[-1].train_loss,
            "density": ticket.realised_density, "seconds": time.perf_counter() - t0}


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of test accuracy per (config, source); the ER - dense gap in points per config."""
    out = []
    configs = list(dict.fromkeys(r["config"] for r in rows))
    print(f"{'config':<28}{'source':>8}{'n':>3}{'seeds':>8}{'test acc':>18}{'vs base':>9}{'ER-dense':>10}")
    def means_of(name: str) -> dict[float, float]:
        return {s: statistics.mean(r["test_acc"] for r in rows if r["config"] == name and r["er_density"] == s)
                for s in {r["er_density"] for r in rows if r["config"] == name}}

    for c in configs:
        ref = "conv" if c.startswith("conv") else "base"  # the conv net's configs compare with its own base
        base = means_of(ref)
        means = {}
        for s in sorted({r["er_density"] for r in rows if r["config"] == c}, reverse=True):
            rs = [r for r in rows if r["config"] == c and r["er_density"] == s]
            accs = [r["test_acc"] for r in rs]
            mean = statistics.mean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            means[s] = mean
            seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
            vs = f"{100 * (mean - base[s]):+.1f}" if s in base and c != ref else ""
            gap = f"{100 * (mean - means[1.0]):+.1f}" if s != 1.0 and 1.0 in means else ""
            print(f"{c:<28}{s:>8g}{len(accs):>3}{seeds:>8}{mean:>10.4f} ± {sd:.4f}{vs:>9}{gap:>10}")
            out.append({"config": c, "er_density": s, "n": len(accs), "mean": mean, "std": sd,
                        "vs_base_points": None if not vs else float(vs), "gap_points": None if not gap else float(gap)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["base"], choices=sorted(CONFIGS))
    ap.add_argument("--sources", nargs="+", type=float, default=[0.5, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print the table of --out and write it as JSON")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.table:
        summary = table(load(args.out))
        args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    torch.set_num_threads(args.threads)
    data = {"flat": (digits(train=True), digits(train=False)),
            "img": (digits(train=True, flat=False), digits(train=False, flat=False))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["config"], r["er_density"], r["seed"]) for r in load(args.out)}
    for seed in args.seeds:
        for name in args.configs:
            for source in args.sources:
                if (name, source, seed) in done:
                    continue
                cfg = {**BASE, **CONFIGS[name]}
                res = {"config": name, "er_density": source, "seed": seed, **res_of(cfg, source, seed, data),
                       "settings": cfg}
                with args.out.open("a") as f:
                    f.write(json.dumps(res) + "\n")
                print(f"{name:<28}{source:>6g} seed {seed}: {res['test_acc']:.4f} ({res['seconds']:.0f} s)",
                      flush=True)
    return 0


def res_of(cfg: dict[str, Any], source: float, seed: int, data: dict[str, Any]) -> dict[str, Any]:
    return one_run(cfg, source, seed, data)


if __name__ == "__main__":
    sys.exit(main())
