"""Training: weak tickets (``fit_weak``), strong tickets (``fit_strong``) and rewiring (``rewire``).

All three run on one engine (:mod:`sparsekit.train.engine`): device, AMP, progress, checkpoints, DDP.
"""

from .engine import Algorithm, Callback, EpochStats, History, TrainConfig, TrainState
from .rewire import SET, RewireMethod, Rewirer, RigL, rewire
from .strong import EdgePopup, fit_strong
from .weak import fit_weak

__all__ = ["fit_weak", "fit_strong", "rewire", "Rewirer", "RewireMethod", "RigL", "SET", "EdgePopup", "Algorithm",
           "Callback", "EpochStats", "History", "TrainConfig", "TrainState"]
