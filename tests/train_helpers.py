"""Data shared by the training tests (fit_weak, fit_strong, rewire)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def blobs(n: int = 256, d: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Gaussian blobs around fixed centers: a small MLP reaches high accuracy in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, d, generator=g), y)
