"""ONNX export of sparse models: masks baked in, sparse storage, onnxruntime parity.

:func:`export_onnx` writes a model with its sparsekit masks baked in (pruned weights are exactly zero)
as a standard ONNX file, in one of three storages:

``dense``
    Every weight as a plain initializer, zeros in place. The file is as large as the dense model.
``sparse-initializer``
    Weights with zeros as ONNX ``SparseTensorProto`` (values plus sorted int64 linear indices):
    about 12 bytes per kept fp32 weight, so it is smaller than dense only below about 1/3 density.
``compact``
    Kept values plus a compact code of their positions, rebuilt into the dense weight by a small
    subgraph that reads initializers only; onnxruntime folds it into a constant when it creates the
    session (its default graph optimisations). About 5 to 6 bytes per kept fp32 weight at densities
    from 0.5 to 0.001. The file stays standard ONNX (opset >= 11, no custom operators).
``auto``
    All three are built; the smallest that passes the checker and (with ``verify=True``) the
    onnxruntime parity check is written.

In the sparse storages each float initializer is encoded only where that makes it smaller (so biases,
normalisation parameters and layers kept dense stay dense). Values equal to zero (``+0.0`` and
``-0.0``) are not stored and read back as ``+0.0``; every other value is stored bit for bit.

**Speed.** onnxruntime densifies sparse initializers when it loads a file, and the compact subgraph
becomes a dense constant; unstructured zeros give no inference speed-up (measured by
``benchmarks/bench_onnx.py``: same latency as dense). The sparse storages make files smaller, not
inference faster.

Compact encoding (``sparsekit-compact-v1``)
-------------------------------------------
A float initializer ``W`` (float16, float32 or float64) of shape ``S`` with ``N`` elements and the
nonzero entries at sorted flat (row-major) positions ``p_0 < p_1 < ... < p_{n-1}`` is replaced by
two initializers and nodes whose output is named ``W``:

* ``bitmask``: ``positions`` is ``uint8[ceil(N / 8)]``, the mask bits packed big-endian within each
  byte (``numpy.packbits``); ``values`` is ``[0, W[p_0], ..., W[p_{n-1}]]`` (a leading zero). Decoding:
  unpack the bits (``BitShift`` by 7..0, ``Mod 2``), keep the first ``N``, ``k = CumSum(bits) * bits``,
  ``W = Reshape(Gather(values, k), S)``. It costs ``N / 8`` bytes of positions (best above density 1/8).
* ``gap8`` / ``gap16``: ``positions`` is ``uint8`` / ``uint16`` codes ``c_i = g_i - 1`` of the gaps
  ``g_i = q_i - q_{i-1}`` (``q_{-1} = -1``) between consecutive *stored* positions ``q``; ``values``
  holds the value stored at each ``q_i``. A gap larger than ``2**b`` (``b`` = 8 or 16) is bridged by
  filler entries of gap ``2**b`` and value 0 (they land on pruned positions, which are zero anyway).
  Decoding: ``q = CumSum(c + 1) - 1``, ``W = Reshape(ScatterND(zeros(N), q[:, None], values), S)``.
  One or two bytes of positions per kept weight (plus the fillers).
* ``zeros``: no kept weight: ``W = Reshape(ConstantOfShape(N), S)``.

The encoder picks the smallest of these per tensor (or keeps it dense if that is smaller). The
model's metadata entry ``sparsekit.storage`` (JSON) lists every encoded tensor with its encoding and
the names of its ``values``/``positions`` initializers; :func:`load_onnx_weights` decodes them in
numpy, without onnxruntime.

The code is split along its jobs: this module exports (and re-exports the public names of the
others), :mod:`sparsekit.formats.onnx_storage` encodes and decodes the storages,
:mod:`sparsekit.formats.onnx_verify` runs the checker, the parity check and :func:`check_onnx`, and
:mod:`sparsekit.formats.onnx_base` holds the result records and helpers they share.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write_bytes
from ..errors import SparsekitError
from .onnx_base import (
    _MAX_PROTO_BYTES,
    COMPACT_FORMAT,
    COMPACT_MIN_OPSET,
    EXPORTERS,
    METADATA_KEY,
    PROVIDERS,
    STORAGES,
    ExportReport,
    LayerExport,
    OnnxCheck,
    Parity,
    TensorStorage,
    _as_shapes,
    _available_provider,
    _example_inputs,
    _first_line,
    _import_onnx,
    _names,
    _opset,
    _provider_name,
    _reference,
    _root_reason,
    _size,
    ort_session,
    random_inputs,
)
from .onnx_storage import encode_storage, load_onnx_weights
from .onnx_verify import _check, _parity, _parity_sets, _set_reference, check_onnx

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "STORAGES", "PROVIDERS", "ExportReport", "LayerExport", "Parity", "TensorStorage", "OnnxCheck",
    "export_onnx", "encode_storage", "load_onnx_weights", "check_onnx", "ort_session", "random_inputs",
    "EXPORTERS", "METADATA_KEY", "COMPACT_FORMAT", "COMPACT_MIN_OPSET",
]


# --- the model to export -------------------------------------------------------------------------------


def _export_and_verify(net: nn.Module, sample: tuple[torch.Tensor, ...], outputs: list[torch.Tensor],
                       masks: dict[str, torch.Tensor], aliases: dict[str, str], ticket_used: Any,
                       sets: list[tuple[str, tuple[torch.Tensor, ...]]], refs: list[list[torch.Tensor]], *,
                       exporter: str, opset: int | None, dynamic_batch: bool, storage: str, verify: bool,
                       provider_name: str, rtol: float, atol: float) -> dict[str, Any]:
    """Export with ``exporter`` and build/check/verify every storage; ``chosen`` is None when all failed."""
    proto, used, note = _export(net, _trace_inputs(net, sample, dynamic_batch), len(outputs), opset=opset,
                                dynamic_batch=dynamic_batch, exporter=exporter)
    note = f"dynamo exporter failed: {note}" if note else None
    _strip_debug_info(proto.graph)
    _add_provenance(proto, used, masks, ticket_used)
    located = _locate(proto, masks, aliases)

    modes = ["dense", "sparse-initializer", "compact"] if storage == "auto" else [storage]
    built: dict[str, tuple[onnx.ModelProto, dict[str, TensorStorage]]] = {}
    rejected: dict[str, str] = {}
    for mode in dict.fromkeys(["dense", *modes]):  # dense too: the reference size
        try:
            built[mode] = encode_storage(proto, mode)
        except SparsekitError as e:
            if storage != "auto":
                raise
            rejected[mode] = str(e)
    sizes = {mode: m.ByteSize() for mode, (m, _) in built.items()}
    weight_bytes = {mode: sum(info[n].payload_bytes for n in located.values() if n and n in info)
                    for mode, (_, info) in built.items()}
    chosen = None
    batch_only: list[bool] = []  # per storage that failed parity: did only the other batch size fail?
    for mode in sorted((m for m in built if m in modes), key=lambda m: (sizes[m], modes.index(m))):
        m, _ = built[mode]
        if sizes[mode] > _MAX_PROTO_BYTES:
            rejected[mode] = (f"{_size(sizes[mode])} is over protobuf's 2 GiB limit for one ONNX file; "
                              "sparsekit writes single-file ONNX only")
            continue
        try:
            checker = _check(m)
        except Exception as e:  # onnx.checker.ValidationError and friends
            rejected[mode] = f"onnx.checker: {_first_line(e)}"
            continue
        parity: list[Parity] = []
        if verify:
            data = m.SerializeToString()
            try:
                session = ort_session(data, provider_name)
            except SparsekitError as e:
                rejected[mode] = str(e)
                continue
            parity = _parity(session, sets, refs, rtol, atol)
            del session
            bad = [p for p in parity if not p.passed]
            if bad:
                batch_only.append(dynamic_batch and all(p is parity[-1] for p in bad))
                rejected[mode] = "; ".join(f"{p.inputs}: {p.problem}" for p in bad)
                continue
        chosen = (mode, m, checker, parity)
        break
    by_problem: dict[str, list[str]] = {}
    for k, v in rejected.items():
        by_problem.setdefault(v, []).append(k)
    why = "; ".join(f"{'/'.join(ks)} storage: {v}" for v, ks in by_problem.items())
    return {"chosen": chosen, "built": built, "rejected": rejected, "sizes": sizes, "weight_bytes": weight_bytes,
            "located": located, "used": used, "note": note, "batch_only": batch_only, "why": why}


def _is_causal_lm(net: nn.Module) -> bool:
    """A transformers causal language model (duck typed: a ``config`` with ``vocab_size`` and
    ``use_cache``, and a ``*ForCausalLM``/``*LMHeadModel`` class)."""
    cfg = getattr(net, "config", None)
    name = type(net).__name__
    return (cfg is not None and hasattr(cfg, "vocab_size") and hasattr(cfg, "use_cache")
            and (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")))


def _logits_only(net: nn.Module) -> str | None:
    """Make a transformers causal LM (the export copy) map ``input_ids`` to ``logits`` with the KV cache
    off, so it exports without a user wrapper; returns a note for the report, or None for other models.

    The exported graph has one input ``input_ids`` (int64, ``(batch, sequence)``; the sequence length is
    that of the sample) and one output, the logits ``(batch, sequence, vocab)``. Parameter names are
    unchanged (the forward is replaced on the copy, the model is not wrapped)."""
    if not _is_causal_lm(net):
        return None
    import types

    lm_forward = net.forward

    def forward(self: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return lm_forward(input_ids=input_ids, use_cache=False, return_dict=True).logits

    net.forward = types.MethodType(forward, net)
    return f"{type(net).__name__} exported as input_ids -> logits with use_cache=False"


def _token_ids(net: nn.Module, input_shape: Any) -> tuple[torch.Tensor, ...]:
    """Random token ids below the vocabulary size as the sample of a causal LM."""
    if input_shape is None:
        raise ValueError("export_onnx needs example_input=token ids or input_shape=(batch, sequence), e.g. "
                         "input_shape=(1, 16), for a causal language model")
    shapes = _as_shapes(input_shape)
    if len(shapes) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"a causal language model takes one input of shape (batch, sequence), got {input_shape!r}")
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, int(net.config.vocab_size), shapes[0], generator=gen),)


@torch.no_grad()
def _baked_copy(model: nn.Module, ticket: Any) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, str], Any]:
    """A CPU, eval-mode copy of ``model`` with the masks baked in (``+0.0`` at pruned positions).

    Returns ``(copy, {fqn: bool mask}, {alias fqn: fqn}, ticket used or None)``. The user's model is
    only read.
    """
    from ..attach import finalize, is_pruned, masked_parameters, ticket_of
    from ..ticket import Ticket
    from .ticket_file import apply_ticket, load_ticket

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise SparsekitError("the model has parameters on the meta device (no values); materialise it before "
                             "exporting")
    if ticket is not None and not isinstance(ticket, (Ticket, str, os.PathLike)):
        raise TypeError(f"ticket must be a sparsekit.Ticket or a ticket file path, got {type(ticket).__name__}")
    own = {fqn: mask for fqn, _, mask in masked_parameters(model)}
    if ticket is not None and own and ticket is not ticket_of(model):
        raise SparsekitError("the model already carries sparsekit masks and a different ticket was given; pass "
                             "ticket=None to export with the model's masks, or pass the unpruned model with ticket=")
    try:
        net = copy.deepcopy(model)
    except Exception as e:  # deepcopy can fail in many ways (unpicklable attributes, ...)
        raise SparsekitError(f"cannot copy the model to export it without changing it: {_first_line(e)}") from e
    net = net.cpu().eval()
    used = ticket_of(model) if own else None
    if ticket is not None and not own:
        if not isinstance(ticket, Ticket):
            ticket = load_ticket(ticket)
        apply_ticket(net, ticket)  # checks fit; loads stored weights into the copy
        own = {fqn: mask.cpu() for fqn, _, mask in masked_parameters(net)}
        finalize(net)
        used = ticket
    if is_pruned(net):  # defensive: a copy should never carry masks
        finalize(net)
    params = dict(net.named_parameters(remove_duplicate=False))
    masks: dict[str, torch.Tensor] = {}
    for fqn, mask in own.items():
        p = params[fqn]
        mask = mask.to(torch.bool).cpu()
        p.masked_fill_(~mask, 0.0)  # +0.0 (a product with the mask would leave -0.0 for negative weights)
        masks[fqn] = mask
    aliases = _aliases(net)
    return net, masks, aliases, used


def _aliases(net: nn.Module) -> dict[str, str]:
    """``{every name of a parameter: its first name}`` (tied weights have several)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in net.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out



# --- export --------------------------------------------------------------------------------------------



def _export_dynamo(net: nn.Module, inputs: tuple[torch.Tensor, ...], n_out: int, opset: int | None,
                   dynamic_batch: bool) -> onnx.ModelProto:
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} if t.dim() else None for t in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, inputs, dynamo=True, optimize=False, verbose=False, opset_version=opset,
                                    dynamic_shapes=dynamic, input_names=_names("input", len(inputs)),
                                    output_names=_names("output", n_out), external_data=False)
    return program.model_proto


def _export_torchscript(net: nn.Module, inputs: tuple[torch.Tensor, ...], n_out: int, opset: int | None,
                        dynamic_batch: bool) -> onnx.ModelProto:
    onnx = _import_onnx()
    in_names, out_names = _names("input", len(inputs)), _names("output", n_out)
    axes = None
    if dynamic_batch:
        axes = {n: {0: "batch"} for n, t in zip(in_names, inputs, strict=True) if t.dim()}
        axes.update({n: {0: "batch"} for n in out_names})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, inputs, buf, dynamo=False, opset_version=opset, do_constant_folding=False,
                          input_names=in_names, output_names=out_names, dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def _export(net: nn.Module, inputs: tuple[torch.Tensor, ...], n_out: int, *, opset: int | None,
            dynamic_batch: bool, exporter: str) -> tuple[onnx.ModelProto, str, str | None]:
    """Export with the dynamo exporter, falling back to TorchScript (``exporter="auto"``)."""
    errors: dict[str, str] = {}
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    for name in order:
        fn = _export_dynamo if name == "dynamo" else _export_torchscript
        try:
            proto = fn(net, inputs, n_out, opset, dynamic_batch)
        except ImportError as e:  # the dynamo exporter needs onnxscript
            errors[name] = f"{_first_line(e)} (pip install onnxscript)"
        except Exception as e:  # exporters raise many types; each one means "this exporter cannot do it"
            errors[name] = _root_reason(e)
        else:
            note = errors.get("dynamo") if name == "torchscript" else None
            return proto, name, note
    tried = "; ".join(f"{k} exporter: {v}" for k, v in errors.items())
    raise SparsekitError(f"torch.onnx cannot export this model: {tried}. Replace the unsupported operation in the "
                         "model's forward (or register a custom ONNX translation), or give another opset")


def _trace_inputs(net: nn.Module, sample: tuple[torch.Tensor, ...], dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """The inputs to export with: for a dynamic batch, batch 2 instead of 1 (torch.export specialises
    axes of size 1 to constants), unless the model does not run at batch 2."""
    if not dynamic_batch or not sample or sample[0].dim() == 0 or sample[0].shape[0] != 1:
        return sample
    two = random_inputs(sample, batch=2, seed=3)
    try:
        _reference(net, two)
    except SparsekitError:
        return sample
    return two


def _strip_debug_info(graph: Any) -> None:
    """Drop the exporters' per-node debug data (stack traces, fx node names, scopes; often a third of a
    sparse file) and the shape annotations of intermediate values (``value_info``, which onnxruntime and
    ``onnx.shape_inference`` infer again). Subgraphs (If/Loop bodies) too."""
    del graph.value_info[:]
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_debug_info(attr.g)
            for sub in attr.graphs:
                _strip_debug_info(sub)



# --- finding the masked weights in the graph -----------------------------------------------------------


def _locate(proto: onnx.ModelProto, masks: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
            ) -> dict[str, str | None]:
    """``{masked fqn: initializer name or None}``: by name (any alias of a tied weight), else by shape and
    zero pattern; raises if a found initializer has a nonzero value where its mask is False."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    names_of: dict[str, list[str]] = {}
    for alias, first in aliases.items():
        names_of.setdefault(first, []).append(alias)
    out: dict[str, str | None] = {}
    unmatched = []
    for fqn, mask in masks.items():
        name = next((n for n in names_of.get(aliases.get(fqn, fqn), [fqn]) if n in inits), None)
        if name is None:
            unmatched.append(fqn)
            out[fqn] = None
            continue
        arr = numpy_helper.to_array(inits[name])
        if tuple(arr.shape) != tuple(mask.shape):
            out[fqn] = None
            unmatched.append(fqn)
            continue
        stray = int(np.count_nonzero(arr[~mask.numpy()]))
        if stray:
            raise RuntimeError(f"internal error: {stray} pruned weights of {fqn} are not zero in the exported graph")
        out[fqn] = name
    if unmatched:  # e.g. constants folded by an exporter: find by shape and zero pattern
        taken = {v for v in out.values() if v}
        by_shape: dict[tuple[int, ...], list[Any]] = {}
        for t in proto.graph.initializer:
            if t.name not in taken and t.data_type in (1, 10, 11):
                by_shape.setdefault(tuple(t.dims), []).append(t)
        for fqn in unmatched:
            mask = masks[fqn].numpy()
            for t in by_shape.get(tuple(mask.shape), []):
                if t.name not in taken and np.array_equal(numpy_helper.to_array(t) != 0, mask):
                    out[fqn] = t.name
                    taken.add(t.name)
                    break
    return out



# --- export_onnx ---------------------------------------------------------------------------------------


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the ONNX model")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"{parent} is not a folder, so {path} cannot be written; choose another path")
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to folder {parent} (permission denied); choose another path")



def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    ticket: Any = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    storage: str = "auto",
    verify: bool = True,
    provider: str = "cpu",
    rtol: float = 1e-3,
    atol: float = 1e-5,
    exporter: str = "auto",
    overwrite: bool = False,
) -> ExportReport:
    """Export ``model`` with its masks baked in to an ONNX file, optionally in sparse storage.

    The model is not changed: a copy is exported, in eval mode, on the CPU, with every pruned weight set
    to exactly zero. ``torch.onnx.export(dynamo=True)`` (torch.export) is tried first and the TorchScript
    exporter (``dynamo=False``) if it fails; the report says which one was used and why. The graph is
    exported without the exporter's optimisation pass, so every parameter stays one initializer named by
    its fqn (onnxruntime does the constant folding and fusions when it loads the file). The result is
    checked with ``onnx.checker`` and, with ``verify``, run in onnxruntime on the sample, on random
    inputs and (with ``dynamic_batch``) on a batch of another size, and compared with PyTorch. The file
    is written atomically only after every check passed: on any error nothing is left behind.

    Args:
        model: the model; its masks (``sparsekit.prune``/``apply_ticket``) are baked in.
        path: the ``.onnx`` file to write.
        example_input: a sample input (tensor, or tuple of tensors for several positional arguments).
        input_shape: instead of a sample, its shape (``(1, 3, 32, 32)``, or a list of shapes); random
            normal inputs of the model's float dtype are used.
        ticket: a :class:`~sparsekit.Ticket` or ticket file to apply to (a copy of) an unpruned model;
            stored weights in the file are used too.
        opset: ONNX opset (default: the exporter's).
        dynamic_batch: make the first axis of every input and output symbolic (``batch``).
        storage: ``"auto"``, ``"dense"``, ``"sparse-initializer"`` or ``"compact"`` (module docstring).
        verify: run the file in onnxruntime and compare with PyTorch; fail if beyond tolerance.
        provider: onnxruntime execution provider for verification, ``"cpu"`` or ``"cuda"``
            (``onnxruntime-gpu``, extra ``gpu``).
        rtol, atol: parity tolerance: ``max|ORT - PyTorch| <= atol + rtol * max|PyTorch|`` per output.
        exporter: ``"auto"`` (dynamo, then TorchScript), ``"dynamo"`` or ``"torchscript"``.
        overwrite: replace ``path`` if it exists.

    Returns:
        An :class:`ExportReport` (``print(report.summary())``).

    Raises:
        SparsekitError: the model does not run on the given input, cannot be exported, or the ONNX file
            does not match PyTorch within tolerance (the message has the numbers).
        ImportError: onnx (or, with ``verify``, onnxruntime) is not installed.
        OSError: ``path`` cannot be written (exists without ``overwrite``, missing folder, permissions).
    """
    _import_onnx()
    if any(getattr(m, "_sparsekit_inference", False) for m in model.modules()):  # sparsekit.sparse_inference
        raise SparsekitError("export_onnx: this model was converted by sparsekit.sparse_inference (sparse kernels, "
                             "inference-only); export the pruned model before sparse_inference instead")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(map(repr, STORAGES))}, got {storage!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(map(repr, EXPORTERS))}, got {exporter!r}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise ValueError(f"opset must be an integer >= 7 (or None for the exporter's default), got {opset!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    provider_name = _available_provider(provider) if verify else _provider_name(provider)
    path = Path(path)
    _check_target(path, overwrite)

    net, masks, aliases, ticket_used = _baked_copy(model, ticket)
    lm_note = _logits_only(net)
    if lm_note and example_input is None:
        sample = _token_ids(net, input_shape)
    else:
        sample = _example_inputs(net, example_input, input_shape)
    outputs = _reference(net, sample)
    sets = _parity_sets(sample, example_input is not None, dynamic_batch) if verify else []
    refs = [outputs] + [_set_reference(net, label, inputs, sample) for label, inputs in sets[1:]] if verify else []
    args = (net, sample, outputs, masks, aliases, ticket_used, sets, refs)
    kw = dict(opset=opset, dynamic_batch=dynamic_batch, storage=storage, verify=verify,
              provider_name=provider_name, rtol=rtol, atol=atol)
    first = _export_and_verify(*args, exporter=exporter, **kw)
    result = first
    if first["chosen"] is None and exporter == "auto" and first["used"] == "dynamo":
        # the dynamo graph exported but its *output* failed a check: the TorchScript exporter may get it right
        try:
            second = _export_and_verify(*args, exporter="torchscript", **kw)
        except SparsekitError as e:
            second = None
            first["why"] += f" (TorchScript exporter tried too: {_first_line(e)})"
        if second is not None and second["chosen"] is not None:
            result = second
            result["note"] = f"dynamo export failed the checks ({first['why']}); TorchScript export passed"
        elif second is not None:
            first["why"] += f"; TorchScript exporter tried too: {second['why']}"
    if result["chosen"] is None:
        used = result["used"]
        hint = (" Only the other batch size failed: the exported graph fixes the batch size; pass "
                "dynamic_batch=False (CLI --static-batch)." if result["batch_only"] and all(result["batch_only"])
                else "")
        other = "torchscript" if used == "dynamo" else "dynamo"
        retry = f" Try exporter={other!r}, or loosen" if exporter != "auto" else " Loosen"
        raise SparsekitError(f"the ONNX export ({used} exporter) does not match PyTorch, nothing was written: "
                             f"{result['why']}.{hint}{retry} rtol/atol if the differences are rounding.")
    chosen, built, rejected, sizes, weight_bytes, located = (
        result[k] for k in ("chosen", "built", "rejected", "sizes", "weight_bytes", "located"))
    used, note = result["used"], result["note"]
    if lm_note:
        note = f"{note}; {lm_note}" if note else lm_note
    mode, m, checker, parity = chosen
    data = m.SerializeToString()
    atomic_write_bytes(path, data, overwrite=overwrite)
    info = built[mode][1]
    layers = []
    for fqn, mask in masks.items():
        name = located.get(fqn)
        st = info.get(name) if name else None
        layers.append(LayerExport(fqn, name, tuple(mask.shape), int(mask.sum()), st.encoding if st else "unknown",
                                  st.payload_bytes if st else 0))
    return ExportReport(
        path=path, storage=mode, requested_storage=storage, exporter=used, exporter_note=note, opset=_opset(m),
        dynamic_batch=dynamic_batch, file_bytes=len(data), sizes=sizes, weight_bytes=weight_bytes,
        params=sum(int(k.numel()) for k in masks.values()), kept=sum(r.kept for r in layers), layers=layers,
        parity=parity, rejected=rejected, provider=provider_name if verify else None, rtol=rtol, atol=atol,
        checker=checker)


def _add_provenance(proto: onnx.ModelProto, exporter: str, masks: Mapping[str, Any], ticket: Any) -> None:
    """Metadata entries: sparsekit version, exporter, masked weights and the ticket's provenance."""
    from .. import __version__

    proto.producer_name = "sparsekit"
    proto.producer_version = __version__
    entries = {"sparsekit.version": __version__, "sparsekit.exporter": exporter,
               "sparsekit.masked_weights": str(len(masks))}
    if ticket is not None:
        entries["sparsekit.ticket"] = json.dumps({"kind": ticket.kind, "method": ticket.method,
                                                  "density": ticket.density, "seed": ticket.seed},
                                                 separators=(",", ":"))
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


