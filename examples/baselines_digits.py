"""Paper Tables 2-3 and App. A.10 in miniature: ER masks against SNIP, SynFlow and IMP, and their ER randomisations.

    python examples/baselines_digits.py                   # 2 models x 2 densities x 8 methods x 3 seeds, 2-5 min
    python examples/baselines_digits.py --quick --out r.json   # a smoke run (1 seed, 2 epochs), ~10 s

On scikit-learn's bundled 8x8 digits (real data, nothing downloaded), an MLP 64-512-512-10 and a small
CNN (three 3x3 convolutions with BatchNorm, 16-32-64 channels, on 1x8x8 images) are pruned at each
density with

* the pruners themselves: ``snip`` (|g*w| on one batch of 128), ``synflow`` (iterative, data-free,
  exponential schedule) and ``imp`` (global magnitude pruning over ``--imp-rounds`` rounds of
  ``--imp-epochs`` epochs, rewound to the initialisation; the paper uses 25 levels, App. A.7);
* their ER randomisations: ``er-snip``, ``er-synflow`` and ``er-from`` of the IMP ticket (a fresh
  random mask with the pruner's layerwise densities, flow-repaired; paper §3, "Snip/Synflow/IMP (ER)");
* the data-free ER schemes ``er-balanced`` and ``er-erk``,

and every mask is trained from the same initialisation (per seed) with ``sparsekit.fit_weak`` and
the paper's optimiser (App. A.7: SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, lr x0.1
at 50% and 75% of the epochs) for ``--epochs`` epochs instead of 160. Prints the mean and standard
deviation of the final test accuracy over seeds and writes every run (with its layerwise densities)
as JSON. Runs on one CPU thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sparsekit
import sparsekit._data_methods  # noqa: F401  (registers er-snip, er-synflow, er-from)
from sparsekit.data import digits
from sparsekit.models import mlp
from sparsekit.pruners import imp, snip, synflow

METHODS = ("snip", "synflow", "imp", "er-snip", "er-synflow", "er-from-imp", "er-balanced", "er-erk")
MODELS = ("mlp", "cnn")


def small_cnn(widths: tuple[int, int, int] = (16, 32, 64)) -> nn.Sequential:
    """Three 3x3 conv + BatchNorm + ReLU blocks (a max-pool after the second), global average pool, linear."""
    a, b, c = widths
    return nn.Sequential(
        nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(b, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def build(model: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # every method starts from the same initialisation for a given seed
    return mlp(in_features=64, hidden=(512, 512), num_classes=10) if model == "mlp" else small_cnn()


def mask(method: str, net: nn.Module, density: float, seed: int, train: Any, shape: tuple[int, ...],
         args: argparse.Namespace, imp_tickets: dict) -> sparsekit.Ticket:
    """Put ``method``'s mask on ``net`` and return its ticket."""
    if method == "snip":
        return snip(net, train, density, seed=seed)
    if method == "synflow":
        return synflow(net, density, args.synflow_iterations, input_shape=shape)
    if method == "imp":
        ticket = imp(net, train, density, args.imp_rounds, args.imp_epochs, rewind_epoch=args.imp_rewind_epoch,
                     device="cpu", seed=seed, progress=False)
        imp_tickets[seed] = ticket
        return ticket
    if method == "er-snip":
        return sparsekit.prune(net, "er-snip", density, data=train, seed=seed)
    if method == "er-synflow":
        return sparsekit.prune(net, "er-synflow", density, iterations=args.synflow_iterations, input_shape=shape,
                               seed=seed)
    if method == "er-from-imp":
        if seed not in imp_tickets:
            raise SystemExit("er-from-imp needs imp in --methods (it randomises the IMP ticket of the same seed)")
        return sparsekit.prune(net, "er-from", ticket=imp_tickets[seed], seed=seed)
    return sparsekit.prune(net, method, density, seed=seed)


def run_one(model: str, method: str, density: float, seed: int, data: tuple, args: argparse.Namespace,
            imp_tickets: dict) -> dict[str, Any]:
    train, test = data
    shape = tuple(train.tensors[0].shape[1:])
    net = build(model, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ticket = mask(method, net, density, seed, train, shape, args, imp_tickets)
    prune_s = time.perf_counter() - t0
    history = sparsekit.fit_weak(net, train, eval_data=test, epochs=args.epochs, seed=seed, device="cpu",
                                 progress=False)
    return {"model": model, "method": method, "density": density, "seed": seed, "epochs": args.epochs,
            "test_acc": history[-1].eval_acc, "realised_density": ticket.realised_density,
            "layer_densities": [round(r.realised_density, 6) for r in ticket.layers],
            "empty_layers": sum(r.nonzeros == 0 for r in ticket.layers),
            "warnings": [str(w.message) for w in caught if "layer collapse" in str(w.message)],
            "prune_seconds": prune_s, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.01])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12, help="fit_weak epochs of every mask (paper: 160)")
    ap.add_argument("--imp-rounds", type=int, default=4, help="IMP prune-rewind rounds (paper: 25)")
    ap.add_argument("--imp-epochs", type=int, default=4, help="IMP training epochs per round")
    ap.add_argument("--imp-rewind-epoch", type=int, default=0, help="0: rewind to the initialisation")
    ap.add_argument("--synflow-iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, density 0.1, short IMP and SynFlow")
    ap.add_argument("--out", type=Path, default=None, help="write every run as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.imp_rounds, args.imp_epochs = 1, 2, 2, 1
        args.synflow_iterations, args.densities = 10, [0.1]
    torch.set_num_threads(args.threads)
    flat = (digits(train=True), digits(train=False))
    images = (digits(train=True, flat=False), digits(train=False, flat=False))
    methods = [m for m in METHODS if m in args.methods]  # imp before er-from-imp

    started = time.perf_counter()
    runs = []
    for model in args.models:
        for density in args.densities:
            for seed in range(args.seeds):
                imp_tickets: dict[int, sparsekit.Ticket] = {}
                for method in methods:
                    runs.append(run_one(model, method, density, seed, flat if model == "mlp" else images, args,
                                        imp_tickets))
    elapsed = time.perf_counter() - started

    print(f"test accuracy on digits after fit_weak ({args.epochs} epochs), mean ± std over {args.seeds} seed(s); "
          f"IMP {args.imp_rounds} rounds x {args.imp_epochs} epochs, SynFlow {args.synflow_iterations} iterations")
    width = 16
    print(f"{'model':<6}{'density':>8}  " + "".join(f"{m:>{width}}" for m in methods))
    for model in args.models:
        for density in args.densities:
            cells = []
            for method in methods:
                accs = [r["test_acc"] for r in runs if (r["model"], r["method"], r["density"]) == (model, method,
                                                                                                  density)]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(f"{statistics.mean(accs):.3f} ± {sd:.3f}")
            print(f"{model:<6}{density:>8}  " + "".join(f"{c:>{width}}" for c in cells))
    collapsed = sorted({(r["model"], r["method"], r["density"]) for r in runs if r["empty_layers"]})
    if collapsed:
        print("masks with an empty layer (layer collapse): " + ", ".join(f"{m}/{k}@{d}" for m, k, d in collapsed))
    print(f"{len(runs)} runs in {elapsed:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs},
                                       indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
