"""Accuracy cost of mask structures (block-ER, constant fan-in, 2:4) against element-wise ER, on digits.

    python benchmarks/structures_digits.py                        # ~2-4 min on 2 CPU cores
    python benchmarks/structures_digits.py --densities 0.05 --seeds 1 --epochs 5 --out /tmp/s.json

An MLP 64-512-512-10 on scikit-learn's bundled digits (real data, no download) is pruned with
``er-balanced`` at each density with each structure (flow repair on) and trained as a weak ticket with
``sparsekit.fit_weak`` (paper App. A.7 optimiser, ``--epochs`` epochs). 2:4 has density 0.5 per layer,
so it is compared with element ER at a global density of 0.5 (``--nm-density``), not at the low
densities. Prints mean ± std of the final test accuracy over seeds, the realised density and the
difference to element ER at the same target density; writes every run as JSON.

Block flow repair adds whole blocks, so at low targets a block mask can keep several times the weights
of the element mask. Then the target-density comparison is not like for like: for every structure whose
mean realised density exceeds element ER's by more than 10%, element ER is also trained at that realised
density (rows ``element@<structure>``, ``--no-matched`` to skip), and ``vs matched`` gives the difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

import sparsekit
from sparsekit.data import digits
from sparsekit.models import mlp

STRUCTURES = ("element", "block:1x4", "block:4x4", "block:16x16", "fanin")


def run_one(structure: str, density: float, seed: int, epochs: int, train, test) -> dict:
    torch.manual_seed(seed)
    model = mlp(in_features=64, hidden=(512, 512), num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ticket = sparsekit.prune(model, "er-balanced", density, seed=seed, structure=structure)
    t0 = time.perf_counter()
    history = sparsekit.fit_weak(model, train, eval_data=test, epochs=epochs, seed=seed, device="cpu",
                                 progress=False)
    totals = ticket.report().totals
    return {"structure": structure, "density": density, "seed": seed, "epochs": epochs,
            "test_acc": history[-1].eval_acc, "train_loss": history[-1].train_loss,
            "realised_density": totals["realised_density"], "edges_added": totals["edges_added"],
            "fallbacks": sum(r.fallbacks for r in ticket.layers),
            "warnings": [str(w.message) for w in caught],
            "layer_densities": [round(r.target_density, 6) for r in ticket.layers],
            "seconds": time.perf_counter() - t0}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["density"], r["structure"]) for r in runs if "matched_to" not in r},
                  key=lambda k: (-k[0], k[1] != "element", k[1]))
    for density, structure in keys:
        sel = [r for r in runs if (r["density"], r["structure"]) == (density, structure) and "matched_to" not in r]
        base = [r["test_acc"] for r in runs if (r["density"], r["structure"]) == (density, "element")
                and "matched_to" not in r]
        matched = [r for r in runs if r.get("matched_to") == [structure, density]]
        rows.append(_row(density, structure, sel, base, matched))
        if matched:
            rows.append(_row(density, f"element@{structure}", matched, base, []))
    return rows


def _row(density: float, structure: str, sel: list[dict], base: list[float], matched: list[dict]) -> dict:
    accs = [r["test_acc"] for r in sel]
    return {
        "density": density, "structure": structure, "seeds": len(sel),
        "acc_mean": statistics.mean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "realised_density": statistics.mean(r["realised_density"] for r in sel),
        "vs_element": statistics.mean(accs) - statistics.mean(base) if base else None,
        "vs_matched": statistics.mean(accs) - statistics.mean(r["test_acc"] for r in matched) if matched else None,
        "fallbacks": statistics.mean(r["fallbacks"] for r in sel)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--structures", nargs="+", default=list(STRUCTURES))
    ap.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.05, 0.01])
    ap.add_argument("--nm-density", type=float, default=0.5, help="global density of the 2:4 vs element row "
                    "(0 to skip)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--no-matched", action="store_true", help="skip element ER at the realised densities of "
                    "block masks that flow repair made denser")
    ap.add_argument("--out", type=Path, default=Path("structures_digits.json"))
    args = ap.parse_args()
    train, test = digits(train=True), digits(train=False)
    grid = [(s, d) for d in args.densities for s in args.structures]
    if args.nm_density > 0:
        grid += [("element", args.nm_density), ("nm:2:4", args.nm_density)]
    runs = [run_one(s, d, seed, args.epochs, train, test) for s, d in grid for seed in range(args.seeds)]
    if not args.no_matched:
        for row in summarise(runs):
            base = [r["realised_density"] for r in runs if (r["density"], r["structure"]) == (row["density"],
                                                                                             "element")]
            if row["structure"] != "element" and base and row["realised_density"] > 1.1 * statistics.mean(base):
                for seed in range(args.seeds):
                    r = run_one("element", round(row["realised_density"], 6), seed, args.epochs, train, test)
                    r["matched_to"] = [row["structure"], row["density"]]
                    runs.append(r)
    rows = summarise(runs)
    print(f"test accuracy on digits, MLP 64-512-512-10, er-balanced + flow repair, {args.epochs} epochs, "
          f"mean ± std over {args.seeds} seeds")
    print(f"{'density':>8}  {'structure':<24}{'accuracy':>18}{'vs element':>12}{'vs matched':>12}{'realised':>10}"
          f"{'fallbacks':>10}")
    for r in rows:
        vs = "" if r["vs_element"] is None or r["structure"] == "element" else f"{r['vs_element']:+.4f}"
        vm = "" if r["vs_matched"] is None else f"{r['vs_matched']:+.4f}"
        print(f"{r['density']:>8}  {r['structure']:<24}{r['acc_mean']:>10.4f} ± {r['acc_std']:.4f}{vs:>12}{vm:>12}"
              f"{r['realised_density']:>10.4f}{r['fallbacks']:>10.1f}")
    args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "summary": rows, "runs": runs},
                                   indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
