"""Weak lottery tickets: train the weights of an ER network inside its fixed mask (paper §2.2-2.5).

The paper's claim (Thm 2.4-2.7, and Table 2-3 in §3) is that a randomly masked network of
suitable layerwise densities trains to the accuracy of a pruned dense network; ``fit_weak`` is that
training with the paper's recipe as defaults (App. A.7: SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, 160 epochs, lr divided by 10 at epochs 80 and 120).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attach import is_pruned
from .engine import CHECKPOINT_NAME, Algorithm, History, TrainConfig, run

__all__ = ["fit_weak"]


def fit_weak(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    *,
    epochs: int,
    eval_data: Dataset | DataLoader | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "multistep",
    optimizer: torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    device: str | torch.device = "auto",
    amp: str | None = "auto",
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    num_workers: int | None = None,
) -> History:
    """Train a pruned model's kept weights; the masks stay fixed (a weak lottery ticket, paper §2.2).

    Args:
        model: a model ``sparsekit.prune`` masked or a ticket was applied to (trained in place and
            left on ``device``). An unpruned model trains dense, with a warning.
        train_data: a Dataset of ``(input, target)`` pairs or a DataLoader. Datasets are batched
            with a per-epoch permutation drawn from ``seed`` (the same one torch's DistributedSampler
            draws), so runs are reproducible and resumable. A DataLoader is used as given (under
            torchrun it is rebuilt with a DistributedSampler); its order is reproducible when its
            sampler draws from torch's global RNG (the default), which is reseeded every epoch.
        epochs: number of passes over ``train_data`` (paper: 160).
        eval_data: evaluated after every epoch (loss and accuracy in the history).
        lr, momentum, weight_decay: SGD settings (paper App. A.7); ignored if ``optimizer`` is given.
        batch_size: per process (under torchrun each rank takes this many samples per step).
        schedule: ``"multistep"`` (lr x0.1 at 50% and 75% of the epochs: 80 and 120 of 160, App. A.7),
            ``"cosine"`` or ``"constant"``.
        optimizer: an Optimizer over the model's parameters, or a factory ``params -> Optimizer``.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        amp: ``"auto"`` (bf16 autocast on CUDA GPUs that support it, else off), ``"bf16"``,
            ``"fp16"`` (with gradient scaling) or None.
        seed: data order, per-epoch RNG reseeding (dropout, augmentation).
        callbacks: :class:`~sparsekit.train.Callback` objects or callables ``fn(state, stats)`` run
            after each epoch; setting ``state.should_stop = True`` ends training early.
        checkpoint_dir: write ``checkpoint.pt`` and ``history.json`` here after every epoch (rank 0).
        resume: continue from ``checkpoint_dir/checkpoint.pt`` (written after each epoch: a run
            killed mid-epoch repeats that epoch); the result is bit-identical to an uninterrupted
            run on the same device. Starts from scratch when there is no checkpoint.
        progress: a progress bar and one line per epoch (rank 0 only).
        loss_fn: ``(logits, targets) -> loss``; default cross-entropy.
        num_workers: DataLoader workers for Datasets; default 0 on CPU and up to 8 per GPU.

    Returns:
        The per-epoch :class:`~sparsekit.train.History` (loss, accuracy, learning rate, images/s).

    Example:
        >>> ticket = sparsekit.prune(model, method="er-balanced", density=0.05)
        >>> history = sparsekit.fit_weak(model, train, eval_data=test, epochs=160)
        >>> sparsekit.save_ticket(ticket, "weak.safetensors", weights="kept")
    """
    config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                         schedule=schedule, seed=seed, amp=amp, num_workers=num_workers,
                         device=device if isinstance(device, str) else str(device))
    resuming = resume and checkpoint_dir is not None and os.path.exists(os.path.join(checkpoint_dir, CHECKPOINT_NAME))
    if not is_pruned(model) and not resuming:
        warnings.warn("fit_weak: the model carries no sparsekit masks, so it trains dense; call "
                      "sparsekit.prune(model, ...) or sparsekit.apply_ticket(model, ...) first", stacklevel=2)
    return run(model, train_data, config, algorithm=Algorithm(), eval_data=eval_data, optimizer=optimizer,
               loss_fn=loss_fn, callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
