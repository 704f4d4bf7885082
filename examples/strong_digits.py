"""Paper Table 1 in miniature: strong tickets found inside an ER network versus inside a dense network.

    python examples/strong_digits.py                       # 2 sources x 2 inits x 3 seeds, ~5 min CPU
    python examples/strong_digits.py --seeds 1 --epochs-per-level 1 --width 128

Edge-popup (``sparsekit.fit_strong``) trains only scores; the weights of the MLP 64-W-W-10 stay at
their seed-drawn random values. A source ER network of density 0.5 (uniform, as in Table 1) and a
dense source (``er_density=1``, the baseline of Table 12) are annealed to the same final density
over the same levels and epochs, with Signed Kaiming Constant and Kaiming Normal weights. Prints mean
± std test accuracy over seeds on scikit-learn's digits and writes every run as JSON.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--sources", nargs="+", type=float, default=[0.5, 1.0])
    ap.add_argument("--inits", nargs="+", default=["signed-kaiming-constant", "kaiming-normal"])
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--epochs-per-level", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    train, test = digits(train=True), digits(train=False)
    runs = []
    for source in args.sources:
        for init in args.inits:
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = mlp(hidden=(args.width, args.width))
                t0 = time.perf_counter()
                ticket = sparsekit.fit_strong(model, train, eval_data=test, density=args.density, er_density=source,
                                              levels=args.levels, epochs_per_level=args.epochs_per_level, init=init,
                                              seed=seed, device="cpu", progress=False)
                runs.append({"er_density": source, "init": init, "seed": seed, "density": ticket.realised_density,
                             "test_acc": ticket.history[-1].eval_acc, "seconds": time.perf_counter() - t0})
    print(f"strong tickets on digits: MLP 64-{args.width}-{args.width}-10, final density {args.density}, "
          f"{args.levels} levels x {args.epochs_per_level} epochs, mean ± std over {args.seeds} seeds")
    print(f"{'source':>12}  {'init':<25}{'test acc':>18}{'s/run':>8}")
    for source in args.sources:
        for init in args.inits:
            rs = [r for r in runs if r["er_density"] == source and r["init"] == init]
            accs = [r["test_acc"] for r in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            name = "dense" if source == 1.0 else f"ER {source:g}"
            print(f"{name:>12}  {init:<25}{statistics.mean(accs):>10.4f} ± {sd:.4f}"
                  f"{statistics.mean(r['seconds'] for r in rs):>8.1f}")
    if args.out is not None:
        args.out.write_text(json.dumps(runs, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
