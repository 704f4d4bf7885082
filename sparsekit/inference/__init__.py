"""Sparse execution of pruned models: sparse weights in memory and in the matmuls (inference only).

>>> fast = sparsekit.sparse_inference(model, sample_input)   # a copy; model is unchanged
>>> print(sparsekit.inference_report(fast))                 # per layer: kernel, times, bytes

See :func:`sparse_inference` and the README section "Faster inference".
"""

from __future__ import annotations

from ._convert import KERNELS, InferenceReport, LayerChoice, inference_report, sparse_inference
from ._kernels import BSRKernel, CondensedKernel, CSRKernel, condensed_width, detect_blocks
from ._modules import (
    InferenceOnlyError,
    SparseConv2d,
    SparseLinear,
    SparseMultiheadAttention,
    is_sparse_module,
)

__all__ = [
    "sparse_inference",
    "inference_report",
    "InferenceReport",
    "LayerChoice",
    "KERNELS",
    "InferenceOnlyError",
    "SparseLinear",
    "SparseConv2d",
    "SparseMultiheadAttention",
    "CSRKernel",
    "BSRKernel",
    "CondensedKernel",
    "detect_blocks",
    "condensed_width",
    "is_sparse_module",
]
