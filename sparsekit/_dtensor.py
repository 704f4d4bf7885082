"""Masks on sharded parameters: FSDP2 (``fully_shard``) and other DTensor parameters.

Under FSDP2 every masked weight becomes a DTensor whose rank-local tensor is a slab of the full
weight. A ticket's masks describe full weights (they are a pure function of the seed, identical on
every rank); this module cuts each rank's slab out of them, so every rank enforces the mask on its
own shard and nothing is all-gathered.

Supported placements: :class:`~torch.distributed.tensor.Shard` (on any dim, even or uneven, as FSDP2
and HSDP shard) and :class:`~torch.distributed.tensor.Replicate`. Anything else (``Partial``,
FSDP2+TP's strided shards) raises :class:`~sparsekit.SparsekitError`: training on would silently
leave some entries unmasked.

Nothing here imports ``torch.distributed`` unless a DTensor already exists (``import sparsekit``
stays lean).
"""

from __future__ import annotations

import sys

import torch

from .errors import SparsekitError
from .masks import CompactMask

__all__ = ["is_dtensor", "local_tensor", "local_mask"]


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (False without importing torch.distributed when none can exist)."""
    mod = sys.modules.get("torch.distributed.tensor")
    if mod is None:
        return False
    return isinstance(t, mod.DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rank-local tensor of a DTensor (sharing its storage), or ``t`` itself."""
    if is_dtensor(t):
        return t._local_tensor  # to_local() would go through autograd; in-place writes need the storage
    return t


def shard_box(p: torch.Tensor, fqn: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(local_shape, global_offset)`` of this rank's part of DTensor ``p``; errors on unsupported layouts."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for pl in p.placements:
        if not (type(pl) is Shard or isinstance(pl, Replicate)):  # _StridedShard subclasses Shard-like types
            raise SparsekitError(
                f"{fqn} is a DTensor with placement {pl!r}: sparsekit enforces masks on Shard and Replicate "
                "placements (FSDP2 fully_shard, HSDP); tensor-parallel or strided layouts are not supported. "
                "Prune and shard with fully_shard only, or finalize(model) to train dense")
    local_shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    actual = tuple(p._local_tensor.shape)
    if tuple(local_shape) != actual:
        raise SparsekitError(
            f"{fqn}: the local shard has shape {actual} but its placements {tuple(p.placements)} give "
            f"{tuple(local_shape)}; this sharding layout is not supported")
    return tuple(local_shape), tuple(offset)


def local_mask(mask: CompactMask, p: torch.Tensor, fqn: str) -> CompactMask:
    """The part of the full-weight ``mask`` that lies on this rank's shard of DTensor ``p``."""
    shape, offset = shard_box(p, fqn)
    full = mask.bool()
    index = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
    part = full[index].contiguous()
    density = mask.nnz / max(mask.numel, 1)
    return CompactMask.from_bool(part, consume=True, density_hint=density).to(p._local_tensor.device)
