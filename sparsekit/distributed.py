"""Checks for masked models trained by several processes (DDP, FSDP2), in the user's own loop or ours.

Masks are a pure function of the seed, so every rank that prunes the same model the same way holds
the same masks (DESIGN.md, "Distribution"). A rank that used another seed, density or ticket would
train a different network while gradients are averaged as if it were the same: nothing crashes, the
result is silently wrong. :func:`check_same_masks` turns that into an error on every rank.
``fit_weak``/``fit_strong``/``rewire`` call it before training; on an FSDP2-sharded model it runs by
itself at the first optimizer step; in a user's DDP loop call it once after wrapping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from .errors import SparsekitError

__all__ = ["check_same_masks", "masks_digest"]


def masks_digest(model: nn.Module | Iterable[object]) -> int:
    """A 64-bit digest of the names and kept positions of every mask on ``model`` (full weights, not shards)."""
    from .attach import _ATTR, masked_parameters

    if isinstance(model, nn.Module):
        handles = [getattr(p, _ATTR) for _n, p, _m in masked_parameters(model)]
    else:
        handles = list(model)
    h = hashlib.blake2b(digest_size=8)
    for handle in sorted(handles, key=lambda x: x.fqn):
        h.update(handle.fqn.encode())
        h.update(handle.mask.kept_indices().cpu().numpy().tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def check_same_masks(model: nn.Module | Iterable[object], group: object | None = None) -> None:
    """Raise :class:`~sparsekit.SparsekitError` on every rank unless all ranks of ``group`` hold the same masks.

    A collective: every rank of ``group`` (default: all) must call it. Does nothing when
    torch.distributed is not initialised or there is one process.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import torch.distributed as dist

    world = dist.get_world_size(group)
    if world <= 1:
        return
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    mine = torch.tensor([masks_digest(model)], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    values = [int(t.item()) for t in every]
    if len(set(values)) > 1:
        odd = [r for r, v in enumerate(values) if v != values[0]]
        raise SparsekitError(
            f"ranks hold different masks (rank 0 differs from ranks {odd}): prune with the same method, density, "
            "seed and model on every rank (masks are a pure function of these), or apply the same ticket file")
