"""Helpers for benchmark scripts that are not ``bench_prune.py``: its other-process CPU accounting, quiet
waits and machine info (the same functions every benchmark uses), plus the share of the machine.

On a small shared machine a concurrent job slows 2-thread torch down by 10-100x. Scripts record the CPU
time *other* processes used during each timed region (``/proc/stat`` busy time minus this process's
own) and can wait until the machine is quiet first.
"""

from __future__ import annotations

import bench_prune
from bench_prune import NCPU, Foreign, wait_for_quiet

__all__ = ["NCPU", "Foreign", "foreign_share", "machine_info", "wait_for_quiet"]


def foreign_share(foreign_s: float, wall_s: float) -> float:
    """Fraction of the machine's CPUs other processes used."""
    return foreign_s / max(1e-9, wall_s * NCPU)


def machine_info() -> dict:
    """:func:`bench_prune.machine_info` plus the CUDA device, if any (for the JSON)."""
    import torch

    return {**bench_prune.machine_info(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
