"""``sparsekit sparsity``: the measured sparsity of any checkpoint, per layer.

Example::

    sparsekit sparsity pruned.pt
    sparsekit sparsity torchvision:resnet18 --json

Counts the zeros of every tensor with two or more dimensions (the weights of Linear, conv and
similar layers) in the file as it is; a state_dict file needs no ``--arch``. Unlike ``verify`` it needs
no ticket: it says how sparse a file is, not whether it follows a given mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch
from rich.text import Text

from . import stdout_console
from ._models import checkpoint_tensors, model_options
from ._options import Col, all_option, json_option, print_table

__all__ = ["sparsity", "measure_sparsity"]


@torch.no_grad()
def measure_sparsity(tensors: dict[str, torch.Tensor]) -> dict[str, object]:
    """``{"layers": [{name, shape, params, nonzeros, density, sparsity}], "totals": {...}}`` over the tensors
    with two or more dimensions (tensors on the meta device have no values and are refused)."""
    rows = []
    for name, t in tensors.items():
        if t.dim() < 2:
            continue
        if t.is_meta:
            raise ValueError(f"{name} is on the meta device (no values); give a checkpoint with values")
        numel, nnz = t.numel(), int(torch.count_nonzero(t))
        rows.append({"name": name, "shape": list(t.shape), "params": numel, "nonzeros": nnz,
                     "density": nnz / numel if numel else 1.0, "sparsity": 1 - nnz / numel if numel else 0.0})
    params = sum(r["params"] for r in rows)
    nnz = sum(r["nonzeros"] for r in rows)
    return {"layers": rows, "totals": {"layers": len(rows), "params": params, "nonzeros": nnz,
                                       "density": nnz / params if params else 1.0,
                                       "sparsity": 1 - nnz / params if params else 0.0}}


@click.command("sparsity", context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@json_option("Print the counts as JSON.")
@all_option()
def sparsity(model: str, arch: str | None, trust_pickle: bool, as_json: bool, show_all: bool) -> None:
    """Measure how sparse MODEL is: zeros per weight tensor (2+ dimensions) and in total.

    MODEL is any checkpoint or model spec as in 'sparsekit prune'; a state_dict file is read as it is.
    """
    result = measure_sparsity(checkpoint_tensors(model, arch=arch, trust_pickle=trust_pickle))
    if as_json:
        click.echo(json.dumps({"model": model, **result}, indent=2))
        return
    t = result["totals"]
    if not t["layers"]:
        raise ValueError(f"{model} has no tensors with two or more dimensions (no Linear or conv weights)")
    cols = [Col("tensor", right=False, name=True), Col("shape", right=False, drop=1), Col("params", drop=2),
            Col("nonzeros"), Col("density"), Col("sparsity")]
    rows = [[r["name"], "×".join(map(str, r["shape"])), f"{r['params']:,}", f"{r['nonzeros']:,}",
             f"{r['density']:.4g}", f"{r['sparsity']:.4g}"] for r in result["layers"]]
    total = [Text("total", style="bold"), "", f"{t['params']:,}", f"{t['nonzeros']:,}", f"{t['density']:.4g}",
             Text(f"{t['sparsity']:.4g}", style="bold")]
    console = stdout_console()
    print_table(console, cols, rows, total=total, show_all=show_all)
    console.print(f"{Path(model).name if Path(model).exists() else model}: {t['nonzeros']:,} of {t['params']:,} "
                  f"weights nonzero in {t['layers']} tensor{'s' if t['layers'] != 1 else ''} of 2+ dimensions "
                  f"(density {t['density']:.4g}, sparsity {t['sparsity']:.4g})", markup=False)
