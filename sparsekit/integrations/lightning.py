"""PyTorch Lightning: prune in ``setup``, rewire after optimizer steps, ticket in the checkpoint dict.

Example::

    from sparsekit.integrations.lightning import SparsekitLightningCallback
    trainer = L.Trainer(max_steps=1000, strategy="ddp",
                        callbacks=[SparsekitLightningCallback("er-balanced", density=0.05, seed=0)])
    trainer.fit(module)                     # or trainer.fit(module, ckpt_path="last.ckpt")

* ``on_fit_start`` prunes the LightningModule (fqns relative to it), after Lightning has set up the
  strategy and, when resuming (``ckpt_path``), loaded the checkpoint: then the ticket stored under
  ``checkpoint["sparsekit_ticket"]`` is attached instead (rewired masks included). (Not ``setup``:
  Lightning loads a checkpoint's weights after ``setup``, and masks attached before would zero weights
  that rewired masks keep.)
* ``rewire="rigl"``/``"set"``: the masks are rewired after every optimizer step (paper §3).
* DDP strategies: every rank prunes the same masks (a pure function of the seed); the callback checks
  it at train start. Lightning's FSDP strategy wraps the model in FSDP1, which sparsekit cannot follow:
  the first optimizer step raises an error naming it.

Imports ``lightning.pytorch`` (or ``pytorch_lightning`` when only that is installed).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..attach import ticket_of
from ..distributed import check_same_masks
from ..errors import SparsekitError
from ._common import SparseCallbackArgs

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

__all__ = ["SparsekitLightningCallback", "CHECKPOINT_KEY"]

#: where the ticket (safetensors bytes) sits in a Lightning checkpoint dict
CHECKPOINT_KEY = "sparsekit_ticket"


class SparsekitLightningCallback(SparseCallbackArgs, Callback):
    """A Lightning ``Callback`` that trains the LightningModule sparse.

    Constructor arguments: :class:`~sparsekit.integrations._common.SparseCallbackArgs`.
    """

    _steps_seen = 0  # optimizer steps already handled (set from the trainer at train start)

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        # after a resumed run restored its weights and masks (on_load_checkpoint): pruning earlier, in
        # setup, would zero weights that the checkpoint's rewired masks keep
        if ticket_of(pl_module) is None:
            self.run.prepare(pl_module)

    def on_load_checkpoint(self, trainer: Any, pl_module: nn.Module, checkpoint: dict[str, Any]) -> None:
        data = checkpoint.get(CHECKPOINT_KEY)
        if data is None:
            if self.run.spec.rewire is not None:
                raise SparsekitError(f"the checkpoint has no '{CHECKPOINT_KEY}': a rewired run can only resume from "
                                     "a checkpoint written with SparsekitLightningCallback")
            return  # pruned at train start: ER masks are a pure function of the spec
        from ..train.engine import load_checkpoint_ticket

        self.run.restore(pl_module, load_checkpoint_ticket({"ticket": data}))

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        if ticket_of(pl_module) is None:
            self.run.prepare(pl_module)
        check_same_masks(pl_module)
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        if self.run.spec.rewire is not None and len(optimizers) != 1:
            raise SparsekitError(f"rewiring needs exactly one optimizer, the LightningModule has {len(optimizers)}")
        total = trainer.estimated_stepping_batches
        if self.run.spec.rewire is not None and total == float("inf"):
            raise SparsekitError("rewiring needs the length of training: set max_steps or max_epochs on the Trainer")
        self.run.start_rewiring(pl_module, optimizers[0] if optimizers else None, total)
        self._steps_seen = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        while self._steps_seen < trainer.global_step:  # one call per optimizer step (gradient accumulation)
            self._steps_seen += 1
            self.run.after_optimizer_step()

    def on_save_checkpoint(self, trainer: Any, pl_module: nn.Module, checkpoint: dict[str, Any]) -> None:
        from ..train.engine import _ticket_payload

        checkpoint[CHECKPOINT_KEY] = _ticket_payload(self.run.ticket(pl_module))
