"""Wrappers that rename parameters: ``torch.compile`` (``_orig_mod.``), ``DistributedDataParallel`` and
``DataParallel`` (``module.``).

Masks are a pure function of each weight's name (the counter RNG is keyed by the fqn, paper §2 masks
``s_ij ~ Ber(p_l)`` drawn per layer), so pruning ``torch.compile(model)`` must give the same masks, and
the same ticket names, as pruning ``model``. Every public entry point that takes a model names weights
on the module inside these wrappers; the masks live on the Parameters, which wrapper and module share.
"""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap"]


def _compiled_type() -> type | None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # noqa: BLE001 - torch builds without dynamo
        return None
    return OptimizedModule


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
