"""Training: weak tickets (``fit_weak``) on one shared engine (device, AMP, checkpoints, DDP)."""

from .engine import Algorithm, Callback, EpochStats, History, TrainConfig, TrainState
from .weak import fit_weak

__all__ = ["fit_weak", "Algorithm", "Callback", "EpochStats", "History", "TrainConfig", "TrainState"]
