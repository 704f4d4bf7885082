"""Sparse weight representations that compute ``Y = W @ X`` (``W``: out x in, ``X``: in x M).

Each kernel is a small ``nn.Module`` that holds the weight *only* in its sparse form, as plain buffers
(so ``.to(device)``, ``state_dict`` and ``deepcopy`` work), and is chosen from the weight's own zero
pattern, never from the name of the method that made it:

- ``csr``: compressed sparse rows, int32 indices, ``torch.sparse.mm`` (MKL on CPU, cuSPARSE on CUDA).
- ``bsr``: block compressed rows when the nonzeros fill whole ``bh x bw`` blocks (block-ER masks),
  one int32 index per block.
- ``condensed``: every output row keeps the same number ``k`` of inputs (constant fan-in, as in
  SRigL's condensed layer): values ``out x k`` and input indices ``out x k``, computed with one gather
  and a batched dot product. Rows with fewer nonzeros are padded with zero values (index 0) when the
  padding is at most :data:`MAX_PADDING` of the kept entries.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CSRKernel", "BSRKernel", "CondensedKernel", "detect_blocks", "condensed_width", "BLOCK_SHAPES",
           "MAX_PADDING", "index_dtype"]

#: block shapes tried by :func:`detect_blocks`, largest first
BLOCK_SHAPES: tuple[tuple[int, int], ...] = ((32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 4), (4, 1))
#: a block or condensed layout is used only if it stores at most this fraction of padding zeros
MAX_PADDING = 0.1


def index_dtype(*sizes: int) -> torch.dtype:
    """int32 when every size fits (half the index memory of torch's default int64), else int64."""
    return torch.int32 if max(sizes) < 2**31 - 1 else torch.int64


class _Kernel(nn.Module):
    """Base class: ``shape`` is the dense ``(out, in)`` shape; ``nnz`` counts kept values (without padding)."""

    name = "?"

    def __init__(self, shape: tuple[int, int], nnz: int) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.nnz = int(nnz)

    def nbytes(self) -> int:
        """Bytes of every buffer this kernel holds."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def to_dense(self) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}"


class _CompressedKernel(_Kernel):
    """CSR and BSR: torch sparse tensor rebuilt (without copying) from buffers, cached per storage."""

    layout: torch.layout

    def _sparse(self) -> torch.Tensor:
        key = (self.values.data_ptr(), self.values.device, self.values.dtype, self.crow.data_ptr())
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != key:
            ctor = torch.sparse_csr_tensor if self.layout == torch.sparse_csr else torch.sparse_bsr_tensor
            t = ctor(self.crow, self.col, self.values, self.shape, check_invariants=False)
            object.__setattr__(self, "_cache", (key, t))
            return t
        return cache[1]

    def __deepcopy__(self, memo: dict) -> _CompressedKernel:
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        import copy

        for k, v in self.__dict__.items():
            if k != "_cache":
                new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W @ x`` for ``x`` of shape ``(in, M)``."""
        return torch.sparse.mm(self._sparse(), x)

    def to_dense(self) -> torch.Tensor:
        return self._sparse().to_dense()


class CSRKernel(_CompressedKernel):
    """Compressed sparse rows with int32 indices."""

    name = "csr"
    layout = torch.sparse_csr

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.detach()
        nz = w != 0
        super().__init__(tuple(w.shape), int(nz.sum()))
        idt = index_dtype(self.nnz, *w.shape)
        counts = nz.sum(1)
        crow = torch.zeros(w.shape[0] + 1, dtype=torch.int64, device=w.device)
        torch.cumsum(counts, 0, out=crow[1:])
        rows, cols = nz.nonzero(as_tuple=True)
        self.register_buffer("crow", crow.to(idt))
        self.register_buffer("col", cols.to(idt))
        self.register_buffer("values", w[rows, cols].contiguous())


def detect_blocks(weight: torch.Tensor, shapes: tuple[tuple[int, int], ...] = BLOCK_SHAPES,
                  max_padding: float = MAX_PADDING, square_only: bool = False) -> tuple[int, int] | None:
    """The largest block shape whose nonzero blocks are (almost) full, or None.

    A block shape qualifies if it divides the weight's shape and the zeros stored inside nonzero blocks
    are at most ``max_padding`` of the nonzeros (kept weights that happen to be exactly zero and
    partially filled blocks are stored as explicit zeros: exact, only a little memory).
    ``square_only``: torch's CPU kernel (MKL) multiplies square blocks only.
    """
    out, inp = weight.shape
    nz = weight.detach() != 0
    nnz = int(nz.sum())
    if nnz == 0:
        return None
    for bh, bw in shapes:
        if bh * bw == 1 or out % bh or inp % bw or (square_only and bh != bw):
            continue
        blocks = int(nz.reshape(out // bh, bh, inp // bw, bw).any(3).any(1).sum())
        if blocks * bh * bw - nnz <= max_padding * nnz:
            return bh, bw
    return None


class BSRKernel(_CompressedKernel):
    """Block compressed rows: ``values`` is ``(blocks, bh, bw)``, one int32 column index per block."""

    name = "bsr"
    layout = torch.sparse_bsr

    def __init__(self, weight: torch.Tensor, block: tuple[int, int]) -> None:
        w = weight.detach()
        bh, bw = block
        out, inp = w.shape
        blocks = w.reshape(out // bh, bh, inp // bw, bw).permute(0, 2, 1, 3)  # (R, C, bh, bw)
        keep = (blocks != 0).any(3).any(2)
        super().__init__((out, inp), int((w != 0).sum()))
        self.block = (bh, bw)
        idt = index_dtype(out, inp, int(keep.sum()))
        crow = torch.zeros(out // bh + 1, dtype=torch.int64, device=w.device)
        torch.cumsum(keep.sum(1), 0, out=crow[1:])
        r, c = keep.nonzero(as_tuple=True)
        self.register_buffer("crow", crow.to(idt))
        self.register_buffer("col", c.to(idt))
        self.register_buffer("values", blocks[r, c].contiguous())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}"


def condensed_width(weight: torch.Tensor, max_padding: float = MAX_PADDING) -> int | None:
    """``k`` = the largest row count if padding every row to ``k`` costs at most ``max_padding``, else None."""
    counts = (weight.detach() != 0).sum(1)
    nnz = int(counts.sum())
    if nnz == 0:
        return None
    k = int(counts.max())
    return k if k * weight.shape[0] - nnz <= max_padding * nnz else None


class CondensedKernel(_Kernel):
    """Constant fan-in rows: ``values`` and ``indices`` are ``(out, k)``; padding has value 0, index 0."""

    name = "condensed"

    def __init__(self, weight: torch.Tensor, k: int) -> None:
        w = weight.detach()
        nz = w != 0
        super().__init__(tuple(w.shape), int(nz.sum()))
        # stable sort puts each row's kept columns first, in increasing column order
        order = torch.sort(nz.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
        vals = torch.gather(w, 1, order)
        valid = torch.gather(nz, 1, order)
        idx = torch.where(valid, order, torch.zeros_like(order))
        self.k = int(k)
        self.register_buffer("indices", idx.to(index_dtype(*w.shape)).contiguous())
        self.register_buffer("values", torch.where(valid, vals, torch.zeros_like(vals)).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W @ x`` for ``x`` of shape ``(in, M)``: gather ``(out, k, M)`` rows of x, one batched dot."""
        g = x[self.indices]  # (out, k, M)
        return torch.bmm(self.values.unsqueeze(1), g).squeeze(1)

    def to_dense(self) -> torch.Tensor:
        w = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        w.scatter_add_(1, self.indices.long(), self.values)
        return w

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"
