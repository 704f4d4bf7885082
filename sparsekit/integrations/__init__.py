"""Adapters for the training stacks users already run; each submodule imports its stack only when used.

* :mod:`sparsekit.integrations.hf`: ``SparsekitCallback`` for ``transformers.Trainer``, plus
  ``save_pretrained`` / ``from_pretrained`` that keep the ticket beside the model files.
* :mod:`sparsekit.integrations.lightning`: ``SparsekitLightningCallback`` for ``lightning.pytorch.Trainer``.
* Accelerate needs no adapter: prune before ``accelerator.prepare`` (README, "In your training code").

Both callbacks share :class:`PruneSpec` (what to prune) and :class:`SparseRun` (prune or restore,
rewire, current ticket), so the stacks behave the same.
"""

from __future__ import annotations

from ._common import TICKET_FILE, PruneSpec, SparseRun

__all__ = ["TICKET_FILE", "PruneSpec", "SparseRun"]
