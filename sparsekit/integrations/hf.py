"""Hugging Face ``transformers.Trainer``: prune at train start, rewire, ticket in every checkpoint.

Example::

    from sparsekit.integrations.hf import SparsekitCallback, save_pretrained
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SparsekitCallback("er-balanced", density=0.05, seed=0)])
    trainer.train()                                   # or trainer.train(resume_from_checkpoint=True)
    save_pretrained(trainer.model, "out/final")       # model files + sparsekit-ticket.safetensors

* ``on_train_begin`` prunes the model (after the Trainer loaded a checkpoint's weights when resuming);
  a resumed run attaches the ticket saved in ``output_dir/checkpoint-<step>`` instead, so rewired
  masks and the rewiring schedule continue where they stopped.
* With ``rewire="rigl"`` or ``"set"`` the masks are rewired after optimizer steps (paper §3).
* ``on_save`` writes ``sparsekit-ticket.safetensors`` into each checkpoint folder (world process 0);
  ``on_train_end`` writes it into ``output_dir`` too.
* Under DDP (``torchrun``) every rank prunes the same masks (they are a pure function of the seed);
  the callback checks that before the first step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ..attach import ticket_of
from ..distributed import check_same_masks
from ..errors import SparsekitError
from ..formats.ticket_file import apply_ticket, load_ticket, save_ticket
from ._common import TICKET_FILE, SparseCallbackArgs

__all__ = ["SparsekitCallback", "save_pretrained", "from_pretrained", "TICKET_FILE"]


class SparsekitCallback(SparseCallbackArgs, TrainerCallback):
    """A ``transformers.TrainerCallback`` that trains the model sparse.

    Constructor arguments: :class:`~sparsekit.integrations._common.SparseCallbackArgs`.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise SparsekitError("the Trainer passed no model to SparsekitCallback.on_train_begin")
        if state.global_step > 0 and ticket_of(model) is None:  # resumed: the checkpoint's masks, if it has them
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / TICKET_FILE
            if path.is_file():
                self.run.restore(model, load_ticket(path))
            elif self.run.spec.rewire is not None:
                raise SparsekitError(
                    f"resuming a rewired run at step {state.global_step} needs the ticket its checkpoint saved, "
                    f"expected at {path}; resume from a checkpoint folder under output_dir")
        self.run.prepare(model)
        check_same_masks(model)
        self.run.start_rewiring(model, optimizer, state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.after_optimizer_step()

    def on_save(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            save_ticket(self.run.ticket(model), folder / TICKET_FILE, overwrite=True)

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                     **kwargs: Any) -> None:
        if state.is_world_process_zero and model is not None:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            save_ticket(self.run.ticket(model), Path(args.output_dir) / TICKET_FILE, overwrite=True)


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *, ticket: Any = None,
                    **kwargs: Any) -> Path:
    """``model.save_pretrained(save_directory)`` plus the ticket beside it (``sparsekit-ticket.safetensors``).

    The saved weights hold the zeros; the ticket re-attaches the masks (:func:`from_pretrained`).
    ``ticket`` defaults to the one attached to ``model``.
    """
    ticket = ticket if ticket is not None else ticket_of(model)
    if ticket is None:
        raise SparsekitError("the model carries no sparsekit ticket; prune it (or pass ticket=) before saving")
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained; it is not a transformers model")
    model.save_pretrained(save_directory, **kwargs)
    return save_ticket(ticket, Path(save_directory) / TICKET_FILE, overwrite=True)


def from_pretrained(model_class: Any, path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(path)`` with the masks of the ticket saved beside it attached again."""
    ticket_path = Path(path) / TICKET_FILE
    if not ticket_path.is_file():
        raise FileNotFoundError(f"{ticket_path} not found: save with sparsekit.integrations.hf.save_pretrained")
    model = model_class.from_pretrained(path, **kwargs)
    apply_ticket(model, ticket_path)
    return model
