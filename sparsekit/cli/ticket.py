"""Ticket files on the command line: ``sparsekit info``, ``sparsekit apply`` and ``sparsekit verify``.

Examples::

    sparsekit prune torchvision:resnet18 -d 0.05 -o ticket.safetensors
    sparsekit info ticket.safetensors
    sparsekit apply ticket.safetensors torchvision:resnet18 -o resnet18-sparse.safetensors
    sparsekit verify ticket.safetensors torchvision:resnet18

``info`` reads only the file's header (nothing is rebuilt, so it is quick for any model size);
``verify`` rebuilds every mask (:func:`sparsekit.load_ticket`) and checks it against a model;
``apply`` writes the masked model's state_dict as a safetensors file, atomically.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
import torch
from rich.text import Text
from torch import nn

import sparsekit
from sparsekit import TicketError
from sparsekit._io import atomic_write_bytes
from sparsekit._safety import escape_text
from sparsekit.formats.codecs import entropy_bound_bytes
from sparsekit.formats.ticket_file import read_ticket_metadata

from . import UserError, stdout_console
from ._models import checkpoint_tensors, load_model
from ._options import Col, all_option, check_out, force_option, json_option, print_table, size_text
from ._tickets import ticket_model, with_model_hint

__all__ = ["info", "apply", "verify", "ticket_info", "binary_entropy_bits", "check_checkpoint",
           "describe_file"]

_TICKET_PATH = click.Path(dir_okay=False, path_type=Path)
_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _ticket_argument(fn: Any) -> Any:
    return click.argument("ticket_path", metavar="TICKET", type=_TICKET_PATH)(fn)


def _optional_model(fn: Any) -> Any:
    """``[MODEL]`` (default: the model the ticket records) with ``--arch`` and ``--trust-pickle``."""
    fn = click.option(
        "--trust-pickle", is_flag=True,
        help="Allow loading a pickled module (torch.save(model)); this runs code from the file, so only "
             "use it for files you trust.")(fn)
    fn = click.option("--arch", metavar="SPEC", default=None,
                      help="Architecture for a state_dict MODEL file (default: the one the ticket records).")(fn)
    return click.argument("model", metavar="[MODEL]", required=False, default=None)(fn)


def binary_entropy_bits(numel: int, nnz: int) -> float:
    """``numel * H(nnz / numel)`` bits: the entropy bound of a mask (``entropy_bound_bytes`` in bits)."""
    return 8 * entropy_bound_bytes(numel, nnz)


# --- info ------------------------------------------------------------------------------------------------


def ticket_info(path: Path) -> dict[str, Any]:
    """What ``sparsekit info --json`` prints: provenance, per-layer sizes and totals, from the header only.

    Raises:
        TicketError: the file is missing, not a ticket, truncated, or its metadata is malformed.
    """
    h = read_ticket_metadata(path)
    table, meta, t, kind, seed, offset = h.table, h.meta, h.ticket, h.kind, h.seed, h.offset
    layers = []
    for row, rec in zip(h.rows, h.records, strict=True):
        fqn, numel, nnz = rec.fqn, rec.numel, rec.nonzeros
        if rec.target_density >= 1:
            encoding = "dense"
        elif kind == "er":
            encoding = "seed"
        else:
            encoding = str(row.get("encoding", "?"))
        mask_bytes = h.tensor_bytes(f"mask/{fqn}")
        weight_bytes = h.tensor_bytes(f"kept/{fqn}") + h.tensor_bytes(f"state/{fqn}")  # dense layers: state/
        layers.append({
            "fqn": fqn, "type": rec.module_type, "shape": list(rec.shape), "params": numel,
            "target_density": rec.target_density, "realised_density": rec.realised_density, "nonzeros": nnz,
            "encoding": encoding, "mask_bytes": mask_bytes, "weight_bytes": weight_bytes,
            "bytes": mask_bytes + weight_bytes, "entropy_bits": binary_entropy_bits(numel, nnz),
        })
    file_bytes = path.stat().st_size
    params = sum(r["params"] for r in layers)
    nnz_total = sum(r["nonzeros"] for r in layers)
    entropy_bits = sum(r["entropy_bits"] for r in layers)
    in_layers = {f"state/{r['fqn']}" for r in layers}
    state_bytes = sum(h.tensor_bytes(name) for name in table if name.startswith("state/") and name not in in_layers)
    weights = t.get("weights") if isinstance(t.get("weights"), dict) else None
    method_options = t.get("method_options") if isinstance(t.get("method_options"), dict) else {}
    return {
        "file": str(path), "format_version": meta.get("format_version"),
        "sparsekit_version": meta.get("sparsekit_version"), "kind": kind, "method": str(t.get("method", "")),
        "method_options": method_options, "seed": seed, "flow": t.get("flow"), "exact": bool(t.get("exact")),
        "structure": h.structure, "rng": t.get("rng"), "target_density": t.get("density"),
        "realised_density": nnz_total / params if params else 1.0, "weights": weights,
        "masks_rebuilt_from_seed": kind == "er", "layers": layers,
        "model": t.get("model") if isinstance(t.get("model"), dict) else None,
        "totals": {
            "layers": len(layers), "masked_layers": sum(r["target_density"] < 1 for r in layers),
            "params": params, "nonzeros": nnz_total,
            "mask_bytes": sum(r["mask_bytes"] for r in layers),
            "weight_bytes": sum(r["weight_bytes"] for r in layers),
            "state_bytes": state_bytes, "header_bytes": offset, "file_bytes": file_bytes,
            "bits_per_kept_weight": file_bytes * 8 / nnz_total if nnz_total else None,
            "entropy_bits_per_kept_weight": entropy_bits / nnz_total if nnz_total else None,
        },
    }


def _density(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "?"


def _bits(x: float | None) -> str:
    return "n/a (no kept weights)" if x is None else f"{x:.4g}"


def _print_info(d: dict[str, Any], show_all: bool) -> None:
    console = stdout_console()
    options = "".join(f", {escape_text(str(k))}={escape_text(repr(v))}" for k, v in d["method_options"].items())
    method = escape_text(d["method"]) or "?"
    console.print(f"{escape_text(d['file'], 1000)}: kind {d['kind']}, method {method}{options}, "
                  f"seed {d['seed']}, flow {d['flow'] or 'none'}, exact {'yes' if d['exact'] else 'no'}, "
                  f"structure {d['structure']}, rng {escape_text(str(d['rng']))}", markup=False)
    if d.get("model"):
        arch = f" (--arch {escape_text(str(d['model']['arch']))})" if d["model"].get("arch") else ""
        console.print(f"model: {escape_text(str(d['model']['spec']), 1000)}{arch}", markup=False)
    t = d["totals"]
    console.print(f"density: target {_density(d['target_density'])}, realised {_density(d['realised_density'])} "
                  f"({t['nonzeros']:,} of {t['params']:,} weights in {_layers(t['layers'], t['masked_layers'])})",
                  markup=False)
    cols = [Col("layer", right=False, name=True), Col("shape", right=False, drop=2), Col("target", drop=3),
            Col("realised"), Col("nonzeros"), Col("encoding", drop=1), Col("bytes")]
    rows = [[escape_text(r["fqn"], 1024), "×".join(map(str, r["shape"])), _density(r["target_density"]),
             _density(r["realised_density"]), f"{r['nonzeros']:,}", escape_text(r["encoding"]), f"{r['bytes']:,}"]
            for r in d["layers"]]
    total = [Text("total", style="bold"), "", _density(d["target_density"]),
             Text(_density(d["realised_density"]), style="bold"), f"{t['nonzeros']:,}", "",
             f"{t['mask_bytes'] + t['weight_bytes']:,}"]
    print_table(console, cols, rows, total=total, show_all=show_all)
    parts = [f"header {t['header_bytes']:,}", f"mask bits {t['mask_bytes']:,}"]
    if d["weights"] is not None:
        dtype = escape_text(str(d["weights"].get("dtype") or "as in the model"))
        parts += [f"layer weights {t['weight_bytes']:,} ({dtype})", f"other state_dict entries {t['state_bytes']:,}"]
    console.print(f"file: {size_text(t['file_bytes'])}: {', '.join(parts)}", markup=False)
    console.print(f"{_bits(t['bits_per_kept_weight'])} bits per kept weight (entropy bound of the masks: "
                  f"{_bits(t['entropy_bits_per_kept_weight'])} bits per kept weight)", markup=False)
    if d["masks_rebuilt_from_seed"]:
        console.print(f"masks: rebuilt from seed {d['seed']} when loaded; no mask bits are stored", markup=False)
    else:
        console.print("masks: stored in the file (encoding per layer above)", markup=False)


@click.command("info", context_settings=_CONTEXT)
@_ticket_argument
@json_option("Print the information as JSON.")
@all_option()
def info(ticket_path: Path, as_json: bool, show_all: bool) -> None:
    """Show what a ticket file holds: provenance, per-layer densities and storage, bits per kept weight.

    Reads only the header; 'sparsekit verify' rebuilds and checks the masks.
    """
    try:
        d = ticket_info(ticket_path)
    except TicketError as e:
        what = describe_file(ticket_path)
        if what is None:
            raise
        raise TicketError(f"{ticket_path} is not a sparsekit ticket: it is {what}") from e
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    _print_info(d, show_all)


def describe_file(path: Path) -> str | None:
    """What a file that is not a ticket is (a state_dict, a module archive, an ONNX model), with the command
    that reads it; None if it cannot be told. Nothing from the file runs as code."""
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        return "an ONNX model; 'sparsekit onnx-check FILE' checks and times it"
    from ._models import read_state_dict_file

    try:
        sd = read_state_dict_file(path)
    except (ValueError, OSError):
        return None
    hint = ("; 'sparsekit sparsity FILE' measures its sparsity per layer and 'sparsekit verify TICKET FILE' "
            "checks it against a ticket")
    if sd is not None:
        n = sum(v.numel() for v in sd.values())
        return f"a state_dict of {len(sd)} tensors ({n:,} values){hint}"
    return f"a model file (a module archive or a pickled module){hint}"


# --- apply -----------------------------------------------------------------------------------------------


def savable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` on the CPU as safetensors accepts it: tensors sharing memory (tied
    weights, views of one buffer) and non-contiguous ones are copied; the keys are unchanged."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = [k for k, v in sd.items() if v.is_meta]
    if meta:
        raise ValueError(f"the model's {', '.join(meta[:3])} are on the meta device (no values); materialise "
                         "the model before applying a ticket to it")
    storages = Counter(v.untyped_storage().data_ptr() for v in sd.values() if v.numel())
    out = {}
    for k, v in sd.items():
        shared = v.numel() and (storages[v.untyped_storage().data_ptr()] > 1
                                or v.untyped_storage().nbytes() != v.numel() * v.element_size())
        out[k] = v.clone(memory_format=torch.contiguous_format) if shared or not v.is_contiguous() else v
    return out


def _layers(n: int, masked: int) -> str:
    """``"3 layers (2 masked)"``: the one layer count every command gives for a ticket."""
    return f"{n} layer{'s' if n != 1 else ''}" + (f" ({masked} masked)" if masked != n else "")


def _masked_summary(ticket: sparsekit.Ticket) -> str:
    masked = [r for r in ticket.layers if r.fqn in ticket.compact_masks]
    params = sum(r.numel for r in ticket.layers)
    nnz = sum(r.nonzeros for r in ticket.layers)
    return (f"{_layers(len(ticket.layers), len(masked))}, {nnz:,} of {params:,} weights kept "
            f"(density {_density(nnz / params if params else 1.0)})")


@click.command("apply", context_settings=_CONTEXT)
@_ticket_argument
@_optional_model
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="OUT",
              help="Where to write the masked model's state_dict (safetensors; conventionally *.safetensors).")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Require the model to be the one the ticket was saved from (same module types and "
                   "parameters); --no-strict only needs the masked layers to be there with their shapes.")
@force_option("Replace OUT if it exists.")
def apply(ticket_path: Path, model: str | None, arch: str | None, trust_pickle: bool, out: Path, strict: bool,
          force: bool) -> None:
    """Apply TICKET to MODEL and write the masked state_dict to OUT (safetensors).

    Weights stored in the ticket (prune --weights kept, every fit command) are loaded too, so the file is
    the trained model. MODEL takes the same forms as in 'sparsekit prune'; without it, the model the ticket
    was made from (see 'sparsekit info'). OUT is written atomically and never replaced without --force.
    """
    check_out(out, force)
    read_ticket_metadata(ticket_path)  # a bad ticket fails before the model is built (header only: quick)
    model, arch = ticket_model(ticket_path, model, arch)
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    try:
        ticket = sparsekit.load_ticket(ticket_path, model=net)  # the model bounds the work the ticket may ask for
        sparsekit.apply_ticket(net, ticket, strict=strict)
    except TicketError as e:
        raise with_model_hint(e, ticket_path) from e
    tensors = savable_state_dict(net)
    from safetensors.torch import save

    metadata = {"format": "pt", "sparsekit_version": sparsekit.__version__, "sparsekit_ticket": ticket_path.name}
    atomic_write_bytes(out, save(tensors, metadata=metadata), overwrite=force)
    with_weights = " and its stored weights" if ticket.weights else ""
    stdout_console().print(
        f"wrote {out}, {size_text(out.stat().st_size)}: state_dict of {len(tensors)} tensors of {model} with "
        f"the masks of {ticket_path}{with_weights}; {_masked_summary(ticket)}", markup=False)


# --- verify ----------------------------------------------------------------------------------------------


def _find_tensor(tensors: dict[str, torch.Tensor], rec: Any) -> torch.Tensor | None:
    for name in (rec.fqn, *rec.aliases):
        for key in (name, f"module.{name}"):  # saved from a DistributedDataParallel wrapper
            if key in tensors:
                return tensors[key]
    return None


@torch.no_grad()
def check_checkpoint(ticket: sparsekit.Ticket, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Check a checkpoint's tensors, as they are, against ``ticket``'s masks.

    For every masked layer: the count of pruned positions (mask False) and of those holding a nonzero
    value in the checkpoint; if the ticket stores weights, the count of kept values that differ from them.

    Returns:
        ``{"layers": [{fqn, shape, pruned, nonzero_at_pruned, kept_differ}], "state_differ": [keys],
        "pruned": total, "nonzero_at_pruned": total, "kept_differ": total, "stored_compared": n}``.

    Raises:
        TicketError: a mask does not rebuild to its recorded count, or a masked weight is missing from the
            checkpoint or has another shape.
    """
    rows = []
    compared = 0
    missing = [r.fqn for r in ticket.layers if r.fqn in ticket.compact_masks and _find_tensor(tensors, r) is None]
    if missing:
        raise TicketError(f"masked weights {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} are missing "
                          f"in the model ({len(missing)} of {len(ticket.compact_masks)}); is it the ticket's model?")
    for r in ticket.layers:
        cm = ticket.compact_masks.get(r.fqn)
        if cm is None:
            continue
        mask = cm.bool().cpu()
        if int(mask.sum()) != r.nonzeros:
            raise TicketError(f"layer {r.fqn}: the rebuilt mask has {int(mask.sum()):,} nonzeros, the ticket "
                              f"records {r.nonzeros:,}")
        p = _find_tensor(tensors, r)
        assert p is not None
        if p.is_meta:
            raise ValueError(f"{r.fqn} is on the meta device (no values); materialise the model to verify it")
        p = p.detach().cpu()
        if tuple(p.shape) != tuple(mask.shape):
            raise TicketError(f"layer {r.fqn}: weight shape {tuple(p.shape)} in the model, {tuple(mask.shape)} in "
                              "the ticket")
        stray = int(torch.count_nonzero(p[~mask]))
        differ = 0
        vals = ticket.weights.get(f"kept/{r.fqn}") if ticket.weights else None
        if vals is not None:
            got = p.reshape(-1)[cm.kept_indices().cpu()]
            differ = int((got != vals.to(p.dtype)).sum())
            compared += vals.numel()
        rows.append({"fqn": r.fqn, "shape": list(mask.shape), "pruned": int(mask.numel() - r.nonzeros),
                     "nonzero_at_pruned": stray, "kept_differ": differ})
    state_differ = []
    if ticket.weights:
        for name, value in ticket.weights.items():
            if not name.startswith("state/"):
                continue
            key = name[len("state/"):]
            got = tensors.get(key, tensors.get(f"module.{key}"))
            if got is None or tuple(got.shape) != tuple(value.shape) or not torch.equal(got.detach().cpu(),
                                                                                       value.to(got.dtype)):
                state_differ.append(key)
            compared += value.numel()
    return {"layers": rows, "state_differ": state_differ, "pruned": sum(x["pruned"] for x in rows),
            "nonzero_at_pruned": sum(x["nonzero_at_pruned"] for x in rows),
            "kept_differ": sum(x["kept_differ"] for x in rows), "stored_compared": compared}


def _print_check(result: dict[str, Any], stored: bool, show_all: bool) -> None:
    cols = [Col("layer", right=False, name=True), Col("shape", right=False, drop=1), Col("pruned"),
            Col("nonzero at pruned")]
    if stored:
        cols.append(Col("kept differ"))
    rows = []
    for x in result["layers"]:
        bad = x["nonzero_at_pruned"] > 0
        row: list[str | Text] = [x["fqn"], "×".join(map(str, x["shape"])), f"{x['pruned']:,}",
                                 Text(f"{x['nonzero_at_pruned']:,}", style="bold red" if bad else "")]
        if stored:
            row.append(Text(f"{x['kept_differ']:,}", style="bold red" if x["kept_differ"] else ""))
        rows.append(row)
    total: list[str | Text] = [Text("total", style="bold"), "", f"{result['pruned']:,}",
                               Text(f"{result['nonzero_at_pruned']:,}", style="bold")]
    if stored:
        total.append(f"{result['kept_differ']:,}")
    print_table(stdout_console(), cols, rows, total=total, show_all=show_all)


@click.command("verify", context_settings=_CONTEXT)
@_ticket_argument
@_optional_model
@json_option("Print the per-layer counts as JSON.")
@all_option()
def verify(ticket_path: Path, model: str | None, arch: str | None, trust_pickle: bool, as_json: bool,
           show_all: bool) -> None:
    """Check MODEL, as it is, against TICKET: exit status 0 if every pruned position is zero, else 1.

    MODEL is usually a checkpoint file (a state_dict needs no --arch here; its tensors are read as they
    are); without it, the model the ticket was made from. For every masked layer verify counts the pruned
    positions and those holding a nonzero value,
    and prints them per layer; if the ticket stores weights (prune --weights kept), it also counts kept
    values that differ from the stored ones. Masks are rebuilt from the ticket (er masks from the seed)
    and must keep the recorded numbers of weights. Nothing is applied to the model.
    """
    read_ticket_metadata(ticket_path)  # a bad ticket fails before the model is read (header only: quick)
    model, arch = ticket_model(ticket_path, model, arch)
    tensors = checkpoint_tensors(model, arch=arch, trust_pickle=trust_pickle)
    try:
        ticket = sparsekit.load_ticket(ticket_path, model=tensors)  # the checkpoint bounds the ticket's work
        result = check_checkpoint(ticket, tensors)
    except TicketError as e:
        raise with_model_hint(e, ticket_path) from e
    stored = bool(ticket.weights)
    if as_json:
        click.echo(json.dumps({"ticket": str(ticket_path), "model": model, **result}, indent=2))
    else:
        _print_check(result, stored, show_all)
    layers = result["layers"]
    bad = [x for x in layers if x["nonzero_at_pruned"]]
    problems = []
    if bad:
        worst = max(bad, key=lambda x: x["nonzero_at_pruned"])
        problems.append(f"{result['nonzero_at_pruned']:,} of {result['pruned']:,} pruned positions hold nonzero "
                        f"values, in {len(bad)} of {len(layers)} masked layers (most: {worst['fqn']}, "
                        f"{worst['nonzero_at_pruned']:,}); the file is not pruned with this ticket (another seed, "
                        "or not pruned)")
    if result["kept_differ"]:
        differ = [x["fqn"] for x in layers if x["kept_differ"]]
        problems.append(f"{result['kept_differ']:,} kept weights differ from the values stored in the ticket "
                        f"(in {', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''})")
    if result["state_differ"]:
        problems.append(f"state_dict entries {', '.join(result['state_differ'][:3])} differ from the values stored "
                        "in the ticket")
    if problems:
        raise UserError(f"verify failed: {model} does not match {ticket_path}: " + "; ".join(problems))
    if as_json:
        return
    source = "rebuilt from seed" if ticket.kind == "er" else "decoded"
    stored_text = f"; {result['stored_compared']:,} stored weight values match" if stored else ""
    stdout_console().print(
        f"ok: {model} matches {ticket_path}: all {result['pruned']:,} pruned positions of "
        f"{_layers(len(ticket.layers), len(layers))} are zero; masks {source}, nonzero counts match{stored_text}",
        markup=False)
