"""Wrappers that rename parameters: ``torch.compile`` (``_orig_mod.``), ``DistributedDataParallel`` and
``DataParallel`` (``module.``).

Masks are a pure function of each weight's name (the counter RNG is keyed by the fqn, paper §2 masks
``s_ij ~ Ber(p_l)`` drawn per layer), so pruning ``torch.compile(model)`` must give the same masks, and
the same ticket names, as pruning ``model``. Every public entry point that takes a model names weights
on the module inside these wrappers; the masks live on the Parameters, which wrapper and module share.
"""

from __future__ import annotations

import sys

from torch import nn

__all__ = ["unwrap"]


def _compiled_type() -> type | None:
    # a compiled model means dynamo is loaded; importing it here would cost ~100 MiB and a second
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` / ``DistributedDataParallel`` / ``DataParallel`` wrappers (nested too)."""
    compiled = _compiled_type()
    for _ in range(16):
        if compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
    return model
