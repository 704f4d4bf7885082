"""Quickstart: prune an MLP with an ER mask and train it in a plain PyTorch loop on sklearn digits.

    python examples/quickstart.py [--density 0.1] [--method er-balanced] [--epochs 30]

Needs scikit-learn (``pip install scikit-learn``; part of the ``dev`` extra). Runs on CPU in seconds.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import sparsekit


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return xtr, ytr, xte, yte


def train(model, data, epochs, seed=0):
    xtr, ytr, xte, yte = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (model(xte).argmax(1) == yte).float().mean().item()


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--method", default="er-balanced")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    data = digits()

    dense_acc = train(make_mlp(), data, args.epochs)
    model = make_mlp()
    ticket = sparsekit.prune(model, method=args.method, density=args.density, seed=0)
    print(ticket.report())
    sparse_acc = train(model, data, args.epochs)
    zeros_ok = all(bool((p[~m] == 0).all()) for _, p, m in sparsekit.masked_parameters(model))
    print(f"\ndense accuracy {dense_acc:.3f} | {args.method} at density {args.density}: {sparse_acc:.3f} "
          f"(realised density {ticket.realised_density:.4f}, masked weights still zero: {zeros_ok})")
    sparsekit.finalize(model)


if __name__ == "__main__":
    main()
