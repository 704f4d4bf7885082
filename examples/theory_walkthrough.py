"""The paper's existence theory on one target network, step by step (paper §2, App. A.2-A.6).

    python examples/theory_walkthrough.py               # ~30 s on a laptop CPU
    python examples/theory_walkthrough.py --trials 2000 --density 0.3

Cells (``# %%``) run top to bottom, like a notebook (VS Code and Jupytext open them as one):

1. train a small ReLU target MLP on scikit-learn's digits (bundled, no download);
2. ask Theorem 2.5 how wide an ER source must be to contain it as a weak ticket;
3. check the existence probability by Monte-Carlo with real ER masks;
4. build the weak ticket inside an ER source (App. A.3-A.4) and see it compute the target exactly;
5. see the construction fail, with a clear message, on a source that is too narrow;
6. Theorem 2.7's lower bound and the exact necessary width (a correction to App. A.6's proof);
7. Lemma 2.1's subset-sum width and what its constant C has to be, measured.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from sparsekit import theory
from sparsekit.models import mlp

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--density", type=float, default=0.5, help="ER density p_l of the source layers 1..L")
parser.add_argument("--delta", type=float, default=0.1, help="allowed failure probability")
parser.add_argument("--trials", type=int, default=300, help="Monte-Carlo trials")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

# %% 1. A target network: 64-32-16-10 ReLU MLP trained on digits, inputs scaled to the box [0, 1]^64.
from sklearn.datasets import load_digits  # noqa: E402

x_np, y_np = load_digits(return_X_y=True)
x = torch.tensor(x_np / 16.0, dtype=torch.float32)
y = torch.tensor(y_np)
g = torch.Generator().manual_seed(args.seed)
perm = torch.randperm(len(x), generator=g)
train, test = perm[:1400], perm[1400:]
torch.manual_seed(args.seed)
target = mlp(64, (32, 16), 10)
opt = torch.optim.Adam(target.parameters(), lr=1e-2)
for _ in range(150):  # full batch
    opt.zero_grad()
    nn.functional.cross_entropy(target(x[train]), y[train]).backward()
    opt.step()
with torch.no_grad():
    target_acc = (target(x[test]).argmax(1) == y[test]).float().mean().item()
print(f"[1] target 64-32-16-10: test accuracy {target_acc:.3f}")

# %% 2. Theorem 2.5: q_l backwards from q_L = 1, then the source widths.
plan = theory.weak_ticket_widths(target, args.density, args.delta)
print(f"\n[2] Theorem {plan.theorem} at p = {args.density}, delta = {args.delta}:")
print(plan.table())
print(f"source widths {plan.source_widths}, existence probability {plan.probability:.4f}")
exact = theory.weak_ticket_widths(target, args.density, args.delta, bound="exact")
print(f"exact per-layer solution of the product inequality: q = {exact.copies} (log bound: {plan.copies})")

# %% 3. Monte-Carlo with the masks sparsekit.prune would draw.
est = theory.simulate_existence(target, plan.source_widths, plan.densities, trials=args.trials, seed=args.seed)
print(f"\n[3] simulated over {est.trials} ER sources: {est.probability:.4f} ± {est.stderr:.4f} "
      f"(analytic {est.analytic:.4f}; within 3 SE: {est.agrees()}; {est.seconds:.1f} s)")
# Narrower sources: the probability drops steeply below the theorem's widths (the union bound is loose).
print("    q scaled by f:   f   widths                 analytic  simulated")
for f in (0.8, 0.7, 0.6):
    q = [max(1, round(c * f)) for c in plan.copies[:-1]] + [1]
    widths = [qi * n for qi, n in zip(q, (64, 32, 16, 10), strict=True)]
    e = theory.simulate_existence(target, widths, plan.densities, trials=args.trials, seed=args.seed)
    print(f"                   {f:.1f}   {str(widths):22} {e.analytic:8.4f}  {e.probability:.4f} ± {e.stderr:.4f}")

# The theory assumes a univariate layer 0 (flow preservation). Drawing it too, at density p_0, and
# assigning its neurons to inputs as the construction does shows what that assumption costs.
for p0, flow in ((0.1, "repair"), (0.02, "repair"), (0.02, None)):
    e = theory.simulate_existence(target, plan.source_widths, plan.densities, trials=args.trials, seed=args.seed,
                                  input_density=p0, flow=flow)
    print(f"    layer 0 drawn at p_0 = {p0} (flow {flow}): simulated {e.probability:.4f} ± {e.stderr:.4f}, "
          f"layer-1 failures {e.layer_failures[0]}/{e.trials}")

# %% 4. The construction (App. A.3-A.4) inside an ER source with a sparse first layer.
source, ticket = theory.er_source(plan, input_density=0.5, seed=args.seed)
emb = theory.embed_weak_ticket(target, source, input_bounds=(0.0, 1.0))
with torch.no_grad():
    source_acc = (source(x[test]).argmax(1) == y[test]).float().mean().item()
er_kept = sum(int(m.sum()) for m in ticket.masks.values())
lt_kept = sum(int(m.sum()) for m in emb.ticket_masks.values())
print(f"\n[4] weak ticket in an ER source with widths {plan.source_widths}:")
scale = target(x[test]).abs().max().item()
print(f"    max |f_T(x) - f_S(x)| on the box: {emb.max_abs_diff(target):.2e} in float32 (outputs up to {scale:.1f}: "
      f"summation order); test accuracy {source_acc:.3f} (target {target_acc:.3f})")
source64, _ = theory.er_source(plan, input_density=0.5, seed=args.seed)
emb64 = theory.embed_weak_ticket(target.double(), source64.double(), input_bounds=(0.0, 1.0))
print(f"    the same construction in float64: max |f_T(x) - f_S(x)| = {emb64.max_abs_diff(target):.2e}")
target.float()
print(f"    edges: ER mask {er_kept:,}, ticket {lt_kept:,} ({lt_kept / er_kept:.1%} of them); "
      f"representatives per layer {emb.representatives}")

# %% 5. Too narrow: one copy per neuron at density 0.1. The error names the weight that has no edge.
narrow, _ = theory.er_source([64, 64, 32, 16, 10], 0.1, seed=args.seed)
try:
    theory.embed_weak_ticket(target, narrow, input_bounds=(0.0, 1.0))
except theory.EmbeddingError as err:
    print(f"\n[5] under-wide source: {err}")

# %% 6. Theorem 2.7 and the exact necessary width for a univariate target with d = 64 inputs.
stated = theory.lower_bound_width(args.density, 64, args.delta)
needed = theory.minimal_path_width(args.density, 64, args.delta)
print(f"\n[6] Theorem 2.7: widths below {stated:.2f} fail w.p. > delta; the exact necessary width is {needed} "
      f"(P = {theory.path_probability(needed, args.density, 64):.4f}). App. A.6 treats the paths of different "
      "inputs as independent; they share hidden-to-output edges, see theory.lower_bound_width.")

# %% 7. Lemma 2.1: n >= C log(1/min(delta, eps)) / log(1/(1-p)); measure the C it takes.
eps = 0.05
for p in (1.0, 0.5):
    rates = {}
    for n in range(4, 29, 4):
        rates[n] = theory.subset_sum_check(n, p, eps, trials=200, seed=args.seed).success_rate
    good = [n for n, r in rates.items() if r >= 1 - args.delta]
    line = ", ".join(f"n={n}: {r:.2f}" for n, r in rates.items())
    print(f"\n[7] p = {p}: success rate within eps = {eps}: {line}")
    if good and p < 1:
        c = good[0] / theory.subset_sum_width(p, eps, args.delta, C=1.0)
        print(f"    first n reaching 1 - delta: {good[0]}, i.e. C ≈ {c:.2f} for this eps and delta")
