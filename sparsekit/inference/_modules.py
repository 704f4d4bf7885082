"""Inference-only modules that compute with a sparse weight kernel (see :mod:`._kernels`).

They replace ``nn.Linear``, ``nn.Conv2d`` and ``nn.MultiheadAttention`` in the copy that
:func:`sparsekit.sparse_inference` returns. They hold no Parameters (the weight lives only in the
kernel's buffers), refuse to run in training mode or when a gradient is asked for, and refuse export
(ONNX/TorchScript tracing): export the dense pruned model instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SparsekitError
from ._kernels import _Kernel

__all__ = ["SparseLinear", "SparseConv2d", "SparseMultiheadAttention", "InferenceOnlyError", "is_sparse_module"]

#: marks a module made by sparse_inference (checked by export_onnx without importing this package)
MARK = "_sparsekit_inference"


class InferenceOnlyError(SparsekitError):
    """A sparse_inference module was asked to train, to give gradients, or to be exported."""


def is_sparse_module(m: nn.Module) -> bool:
    """True for a module that :func:`sparsekit.sparse_inference` put in place of a dense one."""
    return bool(getattr(m, MARK, False))


def _check_inference(m: nn.Module, *xs: torch.Tensor | None) -> None:
    if m.training:
        raise InferenceOnlyError(
            f"{type(m).__name__} from sparsekit.sparse_inference is inference-only and cannot train; call "
            f"model.eval(), and train the pruned dense model (fit_weak/rewire) before converting it")
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs):
        raise InferenceOnlyError(
            f"{type(m).__name__} from sparsekit.sparse_inference cannot compute gradients (its input requires "
            f"grad); run it under torch.no_grad()/torch.inference_mode(), or use the pruned dense model")
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        raise InferenceOnlyError(
            "a sparse_inference model cannot be exported or traced; export the pruned dense model "
            "(sparsekit.export_onnx(model_before_sparse_inference, ...))")


def _no_weight(obj: nn.Module) -> AttributeError:
    """``.weight`` of a sparse module: an AttributeError (``hasattr`` is False) that says why."""
    return AttributeError(
        f"{type(obj).__name__} from sparsekit.sparse_inference holds its weight only in sparse form "
        f"(.kernel, .kernel.to_dense()); code that reads .weight directly cannot use it: keep that "
        f"layer dense with sparse_inference(..., exclude=[its name])")


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held in a sparse kernel (inference only)."""

    def __getattr__(self, name: str) -> object:
        if name == "weight":
            raise _no_weight(self)
        return super().__getattr__(name)

    def __init__(self, kernel: _Kernel, bias: torch.Tensor | None) -> None:
        super().__init__()
        setattr(self, MARK, True)
        self.kernel = kernel
        self.out_features, self.in_features = kernel.shape
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_inference(self, x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = self.kernel(x2.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class SparseConv2d(nn.Module):
    """A 2-D convolution (``groups=1``) as a sparse matrix times the unfolded input (im2col).

    1x1 convolutions with stride 1 and no padding skip the unfold: they are a matmul over channels.
    """

    def __getattr__(self, name: str) -> object:
        if name == "weight":
            raise _no_weight(self)
        return super().__getattr__(name)

    def __init__(self, kernel: _Kernel, bias: torch.Tensor | None, conv: nn.Conv2d) -> None:
        super().__init__()
        setattr(self, MARK, True)
        self.kernel = kernel
        self.out_channels = conv.out_channels
        self.in_channels = conv.in_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.dilation = tuple(conv.dilation)
        self.padding_mode = conv.padding_mode
        if isinstance(conv.padding, str):  # "same" / "valid": resolve to numbers as torch does
            if conv.padding == "valid":
                pad = [(0, 0), (0, 0)]
            else:
                pad = []
                for d, k in zip(self.dilation, self.kernel_size, strict=True):
                    total = d * (k - 1)
                    pad.append((total // 2, total - total // 2))
        else:
            pad = [(p, p) for p in conv.padding]
        self._pad = pad  # per spatial dim (before, after)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._pointwise = (self.kernel_size == (1, 1) and self.stride == (1, 1)
                           and all(p == (0, 0) for p in pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_inference(self, x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        n = x.shape[0]
        if self._pointwise:
            h, w = x.shape[2:]
            cols = x.transpose(0, 1).reshape(self.in_channels, n * h * w)
            y = self.kernel(cols).reshape(self.out_channels, n, h, w).transpose(0, 1)
        else:
            (pt, pb), (pl, pr) = self._pad
            symmetric = pt == pb and pl == pr and self.padding_mode == "zeros"
            if not symmetric and any((pt, pb, pl, pr)):
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x = F.pad(x, (pl, pr, pt, pb), mode=mode)
                padding = (0, 0)
            else:
                padding = (pt, pl)
            h, w = x.shape[2:]
            kh, kw = self.kernel_size
            oh = (h + 2 * padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
            ow = (w + 2 * padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
            cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)
            cols = cols.transpose(0, 1).reshape(cols.shape[1], n * oh * ow)  # (C*kh*kw, N*L)
            y = self.kernel(cols).reshape(self.out_channels, n, oh, ow).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        y = y.contiguous()
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self._pad}, dilation={self.dilation}")


class SparseMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (same call signature, eval semantics) with sparse q/k/v/out projections.

    Each projection is its own :class:`SparseLinear` or, where dense measured faster, ``nn.Linear``.
    Not supported (such modules stay dense): ``add_bias_kv``, ``add_zero_attn``.
    """

    def __init__(self, mha: nn.MultiheadAttention, q: nn.Module, k: nn.Module, v: nn.Module,
                 out: nn.Module) -> None:
        super().__init__()
        setattr(self, MARK, True)
        self.embed_dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.batch_first = mha.batch_first
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q, k, v, out
        # read by torch's TransformerEncoderLayer before it takes its fused fast path (which needs the
        # dense in_proj_weight): these values make it take the regular path, which calls this module
        self.in_proj_bias = None  # the biases live in the projections
        self._qkv_same_embed_dim = False

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same arguments and results as ``nn.MultiheadAttention.forward`` (no dropout: inference)."""
        _check_inference(self, query, key, value)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, lq, _ = query.shape
        s = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(b, lq, h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(b, s, h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(b, s, h, d).transpose(1, 2)

        mask = None  # additive float mask broadcastable to (B, H, L, S)
        if attn_mask is not None:
            am = attn_mask
            am = am.view(b, h, lq, s) if am.dim() == 3 else am.view(1, 1, lq, s)
            mask = _additive(am, q.dtype)
        if key_padding_mask is not None:
            kp = _additive(key_padding_mask.view(b, 1, 1, s), q.dtype)
            mask = kp if mask is None else mask + kp
        causal = is_causal and mask is None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (d ** -0.5)
            if causal:
                scores = scores + _additive(torch.ones(lq, s, dtype=torch.bool, device=q.device).triu(1), q.dtype)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            o = weights @ v
        else:
            weights = None
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        o = self.out_proj(o.transpose(1, 2).reshape(b, lq, h * d))
        if not self.batch_first or unbatched:
            o = o.transpose(0, 1)
        if unbatched:
            o = o.squeeze(1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(1)
            if unbatched:
                weights = weights.squeeze(0)
        return o, weights


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MultiheadAttention's masks (bool: True = not allowed; float: added) as an additive float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)
