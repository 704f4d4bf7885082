"""sparsekit: sparse neural networks from random Erdős–Rényi masks and lottery tickets.

Public API (see README.md):

>>> import sparsekit, torchvision
>>> model = torchvision.models.resnet50()
>>> ticket = sparsekit.prune(model, method="er-balanced", density=0.01)
>>> print(ticket.report())
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import _data_methods  # noqa: F401  (registers er-snip, er-synflow, er-from)
from ._prune import prune
from ._registry import Method, MethodInfo, get_method, list_methods, register_method
from .attach import attach, enforce_masks, finalize, is_pruned, mask_gradients, masked_parameters, ticket_of
from .coverage import Coverage, model_coverage
from .densities import layer_densities
from .distributed import check_same_masks
from .errors import (
    NoPrunableLayersError,
    SparsekitError,
    UnknownMethodError,
    UnsafeFileError,
    UnsupportedLayerError,
)
from .formats.errors import TicketError
from .formats.onnx import export_onnx
from .formats.ticket_file import apply_ticket, load_ticket, save_ticket
from .inference import InferenceReport, inference_report, sparse_inference
from .layers import Layer, LayerLayout, declare_excluded, declare_layouts, find_layers, register_layer_type
from .pruners import imp, snip, synflow
from .structures import Structure
from .ticket import LayerRecord, Report, Ticket
from .train import Callback, History, Rewirer, fit_strong, fit_weak, rewire

_SUBMODULES = ("models", "data", "reproduce")


def __getattr__(name: str):
    """``sparsekit.models``, ``.data`` and ``.reproduce`` are imported on first use (keeps the import lean)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "prune",
    "layer_densities",
    "snip",
    "synflow",
    "imp",
    "save_ticket",
    "load_ticket",
    "apply_ticket",
    "export_onnx",
    "sparse_inference",
    "inference_report",
    "InferenceReport",
    "TicketError",
    "list_methods",
    "get_method",
    "register_method",
    "Method",
    "MethodInfo",
    "Structure",
    "Ticket",
    "LayerRecord",
    "Report",
    "attach",
    "finalize",
    "enforce_masks",
    "is_pruned",
    "masked_parameters",
    "mask_gradients",
    "ticket_of",
    "check_same_masks",
    "fit_weak",
    "fit_strong",
    "rewire",
    "Rewirer",
    "History",
    "Callback",
    "find_layers",
    "register_layer_type",
    "declare_layouts",
    "declare_excluded",
    "model_coverage",
    "Coverage",
    "Layer",
    "LayerLayout",
    "SparsekitError",
    "UnsupportedLayerError",
    "UnknownMethodError",
    "NoPrunableLayersError",
    "UnsafeFileError",
]
