"""Your own training loop on a pruned model: what keeps the masks enforced, in a few lines.

    python examples/own_loop.py [--epochs 20] [--density 0.05]

The pattern (nothing else is needed)::

    ticket = sparsekit.prune(model, method="er-balanced", density=0.05)   # 1. prune once
    for x, y in loader:                                                   # 2. train as usual
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    sparsekit.enforce_masks(model)   # 3. only after writing weights yourself (EMA, p.data.copy_, ...)

Why it holds: a gradient hook zeroes the masked gradient entries as they arrive, and one optimizer
step post-hook registered by sparsekit covers every ``torch.optim`` optimizer (for SGD, Adam, AdamW,
... it cleans their state once; any other optimizer, including your own, is re-masked after each
step). Mixed precision (GradScaler), gradient clipping, DistributedDataParallel and
``load_state_dict`` are covered too. Runs on CPU in seconds on scikit-learn's digits.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import sparsekit
from sparsekit.data import digits


class SignSGD(torch.optim.Optimizer):
    """A user-written optimizer sparsekit knows nothing about: it is re-masked after every step."""

    def __init__(self, params, lr: float = 1e-3) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad) + 1e-3, alpha=-group["lr"])  # would revive masked weights
        return None


def masks_hold(model: nn.Module) -> bool:
    return all(bool((p[~m] == 0).all()) for _, p, m in sparsekit.masked_parameters(model))


def accuracy(model: nn.Module, data) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(model: nn.Module, opt: torch.optim.Optimizer, data, epochs: int) -> None:
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--density", type=float, default=0.05)
    args = ap.parse_args()
    train_set, test_set = digits(train=True), digits(train=False)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    ticket = sparsekit.prune(model, method="er-balanced", density=args.density, seed=0)

    train(model, torch.optim.AdamW(model.parameters(), lr=1e-3), train_set, args.epochs)
    print(f"AdamW: test accuracy {accuracy(model, test_set):.3f}, masked weights still zero: {masks_hold(model)}")

    train(model, SignSGD(model.parameters(), lr=1e-4), train_set, 1)
    print(f"custom optimizer: masked weights still zero: {masks_hold(model)}")

    with torch.no_grad():  # a write sparsekit cannot see (e.g. loading EMA weights by hand) ...
        for p in model.parameters():
            p.add_(0.01)
    print(f"after a manual write: masked weights zero: {masks_hold(model)}")
    sparsekit.enforce_masks(model)  # ... so re-apply the masks once
    print(f"after enforce_masks: masked weights still zero: {masks_hold(model)}")
    print(f"realised density {ticket.realised_density:.4f}")


if __name__ == "__main__":
    main()
