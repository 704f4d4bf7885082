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
from rich.table import Table
from rich.text import Text
from torch import nn

import sparsekit
from sparsekit import TicketError
from sparsekit._io import atomic_write_bytes
from sparsekit._safety import escape_text
from sparsekit.formats.codecs import entropy_bound_bytes
from sparsekit.formats.ticket_file import read_ticket_metadata

from . import stdout_console
from ._models import load_model, model_options
from ._options import add_rows, all_option, check_out, force_option, json_option, size_text

__all__ = ["info", "apply", "verify", "ticket_info", "binary_entropy_bits"]

_TICKET_PATH = click.Path(dir_okay=False, path_type=Path)
_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _ticket_argument(fn: Any) -> Any:
    return click.argument("ticket_path", metavar="TICKET", type=_TICKET_PATH)(fn)


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
        "rng": t.get("rng"), "target_density": t.get("density"),
        "realised_density": nnz_total / params if params else 1.0, "weights": weights,
        "masks_rebuilt_from_seed": kind == "er", "layers": layers,
        "totals": {
            "layers": len(layers), "params": params, "nonzeros": nnz_total,
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
                  f"rng {escape_text(str(d['rng']))}", markup=False)
    t = d["totals"]
    console.print(f"density: target {_density(d['target_density'])}, realised {_density(d['realised_density'])} "
                  f"({t['nonzeros']:,} of {t['params']:,} weights in {t['layers']} layers)", markup=False)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("layer", overflow="fold")
    table.add_column("shape", no_wrap=True)
    for name in ("target", "realised", "nonzeros", "encoding", "bytes"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = [[Text(escape_text(r["fqn"], 1024)), Text("×".join(map(str, r["shape"]))),
             Text(_density(r["target_density"])), Text(_density(r["realised_density"])),
             Text(f"{r['nonzeros']:,}"), Text(escape_text(r["encoding"])), Text(f"{r['bytes']:,}")]
            for r in d["layers"]]
    add_rows(table, rows, show_all=show_all)
    table.add_row(Text("total", style="bold"), Text(""), Text(_density(d["target_density"])),
                  Text(_density(d["realised_density"]), style="bold"), Text(f"{t['nonzeros']:,}"), Text(""),
                  Text(f"{t['mask_bytes'] + t['weight_bytes']:,}"))
    console.print(table)
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
    d = ticket_info(ticket_path)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    _print_info(d, show_all)


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


def _masked_summary(ticket: sparsekit.Ticket) -> str:
    masked = [r for r in ticket.layers if r.fqn in ticket.compact_masks]
    params = sum(r.numel for r in ticket.layers)
    nnz = sum(r.nonzeros for r in ticket.layers)
    return (f"{len(masked)} masked layers, {nnz:,} of {params:,} weights kept "
            f"(density {_density(nnz / params if params else 1.0)})")


@click.command("apply", context_settings=_CONTEXT)
@_ticket_argument
@model_options
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="OUT",
              help="Where to write the masked model's state_dict (safetensors; conventionally *.safetensors).")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Require the model to be the one the ticket was saved from (same module types and "
                   "parameters); --no-strict only needs the masked layers to be there with their shapes.")
@force_option("Replace OUT if it exists.")
def apply(ticket_path: Path, model: str, arch: str | None, trust_pickle: bool, out: Path, strict: bool,
          force: bool) -> None:
    """Apply TICKET to MODEL and write the masked state_dict to OUT (safetensors).

    Weights stored in the ticket (prune --weights kept) are loaded too. MODEL takes the same forms as in
    'sparsekit prune'. OUT is written atomically and never replaced without --force.
    """
    check_out(out, force)
    read_ticket_metadata(ticket_path)  # a bad ticket fails before the model is built (header only: quick)
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    ticket = sparsekit.load_ticket(ticket_path, model=net)  # the model bounds the work the ticket may ask for
    sparsekit.apply_ticket(net, ticket, strict=strict)
    tensors = savable_state_dict(net)
    from safetensors.torch import save

    metadata = {"format": "pt", "sparsekit_version": sparsekit.__version__, "sparsekit_ticket": ticket_path.name}
    atomic_write_bytes(out, save(tensors, metadata=metadata), overwrite=force)
    with_weights = " and its stored weights" if ticket.weights else ""
    stdout_console().print(
        f"wrote {out}, {size_text(out.stat().st_size)}: state_dict of {len(tensors)} tensors of {model} with "
        f"the masks of {ticket_path}{with_weights}; {_masked_summary(ticket)}", markup=False)


# --- verify ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _verify(ticket: sparsekit.Ticket, net: nn.Module) -> tuple[int, int]:
    """Check ``net`` (with ``ticket`` applied) against the ticket; returns (weights checked, stored values
    compared). Raises TicketError naming the first layer that does not match."""
    checked = compared = 0
    for r in ticket.layers:
        cm = ticket.compact_masks.get(r.fqn)
        if cm is None:
            continue
        mask = cm.bool().cpu()
        if int(mask.sum()) != r.nonzeros:
            raise TicketError(f"layer {r.fqn}: the rebuilt mask has {int(mask.sum()):,} nonzeros, the ticket "
                              f"records {r.nonzeros:,}")
        p = net.get_parameter(r.fqn).detach().cpu()
        if tuple(p.shape) != tuple(mask.shape):
            raise TicketError(f"layer {r.fqn}: weight shape {tuple(p.shape)}, mask {tuple(mask.shape)}")
        stray = int(torch.count_nonzero(p[~mask]))
        if stray:
            raise TicketError(f"layer {r.fqn}: {stray:,} weights at pruned positions are not zero")
        checked += p.numel()
        if ticket.weights:
            vals = ticket.weights.get(f"kept/{r.fqn}")
            if vals is not None:
                got = p.reshape(-1)[cm.kept_indices().cpu()]
                if not torch.equal(got, vals.to(p.dtype)):
                    bad = int((got != vals.to(p.dtype)).sum())
                    raise TicketError(f"layer {r.fqn}: {bad:,} kept weights differ from the values stored in the "
                                      "ticket")
                compared += vals.numel()
    if ticket.weights:
        sd = net.state_dict()
        for name, t in ticket.weights.items():
            if not name.startswith("state/"):
                continue
            key = name[len("state/"):]
            if key not in sd or not torch.equal(sd[key].detach().cpu(), t.to(sd[key].dtype)):
                raise TicketError(f"state_dict entry {key} differs from the value stored in the ticket")
            compared += t.numel()
    return checked, compared


@click.command("verify", context_settings=_CONTEXT)
@_ticket_argument
@model_options
def verify(ticket_path: Path, model: str, arch: str | None, trust_pickle: bool) -> None:
    """Check that TICKET rebuilds and fits MODEL exactly; exit status 0 if so, else 1 with the reason.

    Rebuilds every mask (er masks from the seed), applies the ticket strictly to MODEL, and checks that
    pruned positions are zero, that the masks keep the recorded numbers of weights and, if the ticket
    stores weights, that the model's kept values equal the stored ones.
    """
    read_ticket_metadata(ticket_path)  # a bad ticket fails before the model is built (header only: quick)
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if any(p.is_meta for p in net.parameters()):
        raise ValueError(f"{model} is on the meta device (no values); materialise it to verify")
    ticket = sparsekit.load_ticket(ticket_path, model=net)  # the model bounds the work the ticket may ask for
    sparsekit.apply_ticket(net, ticket, strict=True)
    checked, compared = _verify(ticket, net)
    source = "rebuilt from seed" if ticket.kind == "er" else "decoded"
    stored = f"; {compared:,} stored weight values match" if ticket.weights else ""
    click.echo(f"ok: {ticket_path} fits {model}: {_masked_summary(ticket)}; masks {source}, nonzero counts match, "
               f"all pruned positions of the masked weights ({checked:,} entries) are zero{stored}")
