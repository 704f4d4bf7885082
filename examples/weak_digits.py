"""Paper Table 2 in miniature: layerwise density schemes and flow repair at extreme sparsity, on digits.

    python examples/weak_digits.py                      # 4 methods x 3 densities x 2 flows x 3 seeds, ~3 min CPU
    python examples/weak_digits.py --densities 0.01 --seeds 1 --epochs 5 --out results.json

An MLP 64-512-512-10 (scikit-learn's bundled digits, real data, no download) is pruned with each
ER method at each density, with flow repair (App. A.1) and without, and trained as a weak ticket with
``sparsekit.fit_weak`` using the paper's optimiser (App. A.7: SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, lr x0.1 at 50% and 75% of the epochs), for ``--epochs`` epochs instead of 160.
Prints mean and standard deviation of the final test accuracy over seeds, and writes every run as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import sparsekit
from sparsekit.data import digits
from sparsekit.models import mlp

METHODS = ("er-uniform", "er-erk", "er-balanced", "er-pyramidal")


def run_one(method: str, density: float, flow: str | None, seed: int, epochs: int, train, test) -> dict:
    torch.manual_seed(seed)
    model = mlp(in_features=64, hidden=(512, 512), num_classes=10)
    ticket = sparsekit.prune(model, method=method, density=density, seed=seed, flow=flow)
    t0 = time.perf_counter()
    history = sparsekit.fit_weak(model, train, eval_data=test, epochs=epochs, seed=seed, device="cpu",
                                 progress=False)
    totals = ticket.report().totals
    return {"method": method, "density": density, "flow": flow or "none", "seed": seed, "epochs": epochs,
            "test_acc": history[-1].eval_acc, "train_loss": history[-1].train_loss,
            "realised_density": totals["realised_density"], "edges_added": totals["edges_added"],
            "layer_densities": [round(r.target_density, 6) for r in ticket.layers],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--densities", nargs="+", type=float, default=[0.05, 0.01, 0.003])
    ap.add_argument("--flows", nargs="+", default=["repair", "none"], choices=["repair", "none"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="write every run as JSON here")
    args = ap.parse_args()
    train, test = digits(train=True), digits(train=False)

    runs = []
    for density in args.densities:
        for method in args.methods:
            for flow in args.flows:
                for seed in range(args.seeds):
                    runs.append(run_one(method, density, None if flow == "none" else flow, seed, args.epochs,
                                        train, test))
    print(f"test accuracy on digits, MLP 64-512-512-10, {args.epochs} epochs, mean ± std over {args.seeds} seeds")
    header = f"{'density':>8}  {'method':<13}" + "".join(f"{'flow ' + f:>22}" for f in args.flows) + \
        f"{'edges added':>13}"
    print(header)
    for density in args.densities:
        for method in args.methods:
            cells, edges = [], 0.0
            for flow in args.flows:
                key = (method, density, flow)
                accs = [r["test_acc"] for r in runs if (r["method"], r["density"], r["flow"]) == key]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(f"{statistics.mean(accs):.4f} ± {sd:.4f}")
                if flow == "repair":
                    edges = statistics.mean(r["edges_added"] for r in runs if (r["method"], r["density"],
                                            r["flow"]) == (method, density, flow))
            print(f"{density:>8}  {method:<13}" + "".join(f"{c:>22}" for c in cells) + f"{edges:>13.1f}")
    if args.out is not None:
        args.out.write_text(json.dumps(runs, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
