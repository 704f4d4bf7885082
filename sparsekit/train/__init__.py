"""Training: weak (``fit_weak``) and strong (``fit_strong``) tickets on one shared engine.

The engine (:mod:`sparsekit.train.engine`) handles device, AMP, progress, checkpoints and DDP.
"""

from .engine import Algorithm, Callback, EpochStats, History, TrainConfig, TrainState
from .strong import EdgePopup, fit_strong
from .weak import fit_weak

__all__ = ["fit_weak", "fit_strong", "EdgePopup", "Algorithm", "Callback", "EpochStats", "History", "TrainConfig",
           "TrainState"]
