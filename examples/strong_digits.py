"""Paper Table 1 in miniature: strong tickets found inside ER networks of several densities versus a dense one.

    python examples/strong_digits.py                          # 4 sources x 2 finals x 3 seeds, ~25 min CPU
    python examples/strong_digits.py --seeds 1 --finals 0.1   # one column, ~4 min
    python examples/strong_digits.py --seeds 1 --epochs-per-level 1 --width 128 --sources 1 0.5

Edge-popup (``sparsekit.fit_strong``, its defaults: Signed Kaiming Constant weights scaled to the
final ticket's fan-in, scores by SGD with a cosine rate restarted per level) trains only scores; the
weights of the MLP 64-W-W-10 stay at their seed-drawn random values (biases zero, as in the
references). Each ER source of uniform density (the rows; 1 is the dense source, the baseline of
Tables 12 and 14) is annealed geometrically to each final density (the columns) over the same levels
and epochs. Prints a Table 1-style grid, "initial -> final density", of mean ± std test accuracy
over seeds on scikit-learn's digits, and the difference of each ER row to the dense row in points;
``--out`` writes every run as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import sparsekit
from sparsekit.data import digits
from sparsekit.models import mlp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--sources", nargs="+", type=float, default=[1.0, 0.5, 0.3, 0.2],
                    help="ER source densities (rows); 1 is the dense source")
    ap.add_argument("--finals", nargs="+", type=float, default=[0.1, 0.05], help="final densities (columns)")
    ap.add_argument("--init", default="signed-kaiming-constant")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--epochs-per-level", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    train, test = digits(train=True), digits(train=False)
    runs = []
    for source in args.sources:
        for final in args.finals:
            if final > source:
                continue
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = mlp(hidden=(args.width, args.width))
                with torch.no_grad():  # the references' zero biases (frozen by fit_strong)
                    for m in model.modules():
                        if isinstance(m, nn.Linear):
                            m.bias.zero_()
                t0 = time.perf_counter()
                ticket = sparsekit.fit_strong(model, train, eval_data=test, density=final, er_density=source,
                                              levels=args.levels, epochs_per_level=args.epochs_per_level,
                                              init=args.init, batch_size=args.batch_size, seed=seed, device="cpu",
                                              progress=False)
                runs.append({"er_density": source, "density": final, "seed": seed,
                             "realised_density": ticket.realised_density, "test_acc": ticket.history[-1].eval_acc,
                             "seconds": time.perf_counter() - t0})
    print(f"strong tickets on digits: MLP 64-{args.width}-{args.width}-10, {args.init}, {args.levels} levels x "
          f"{args.epochs_per_level} epochs, batch {args.batch_size}; test accuracy, mean ± std over {args.seeds} "
          f"seed(s); (pts) = difference to the dense source")
    print(f"{'source':>10}" + "".join(f"{'-> ' + format(f, 'g'):>26}" for f in args.finals))
    dense = {f: statistics.mean(accs) for f in args.finals
             if (accs := [r["test_acc"] for r in runs if r["er_density"] == 1.0 and r["density"] == f])}
    for source in args.sources:
        cells = []
        for final in args.finals:
            accs = [r["test_acc"] for r in runs if r["er_density"] == source and r["density"] == final]
            if not accs:
                cells.append(f"{'-':>26}")
                continue
            mean = statistics.mean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            pts = f" ({100 * (mean - dense[final]):+.1f})" if source != 1.0 and final in dense else ""
            cells.append(f"{f'{mean:.4f} ± {sd:.4f}{pts}':>26}")
        name = "dense" if source == 1.0 else f"ER {source:g}"
        print(f"{name:>10}" + "".join(cells))
    if args.out is not None:
        args.out.write_text(json.dumps(runs, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
