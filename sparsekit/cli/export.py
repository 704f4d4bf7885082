"""ONNX on the command line: ``sparsekit export`` and ``sparsekit onnx-check``.

Examples::

    sparsekit prune sparsekit:vgg16 -d 0.01 -o vgg16.safetensors
    sparsekit export vgg16.safetensors sparsekit:vgg16 -o vgg16.onnx --input-shape 1,3,32,32
    sparsekit onnx-check vgg16.onnx --runs 50

``export`` applies a ticket to a model, bakes the masks in and writes an ONNX file with
:func:`sparsekit.export_onnx` (storage ``auto``: the smallest of dense, sparse initializers and the
compact code that passes the onnxruntime parity check); it prints the sizes, the storage chosen and the
parity numbers. ``onnx-check`` loads any ONNX file in onnxruntime and reports the session creation time
and the median latency on random inputs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from sparsekit.formats.onnx import EXPORTERS, STORAGES, ExportReport, OnnxCheck, check_onnx, export_onnx

from . import UserError, stdout_console
from ._models import load_model
from ._options import check_out, force_option, json_option, size_text
from ._tickets import ticket_model

__all__ = ["export", "onnx_check", "ShapeType"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_SHAPE = re.compile(r"^\s*\d+(\s*[,x]\s*\d+)*\s*$")


MAX_INPUT_ELEMENTS = 2**28
"""Largest example input (elements) the CLI builds: 1 GiB of float32."""


class ShapeType(click.ParamType):
    """``1,3,32,32`` (or ``1x3x32x32``) as a tuple of positive integers."""

    name = "shape"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        if not _SHAPE.match(text):
            self.fail(f"{text!r} is not a shape; write the sizes separated by commas, e.g. 1,3,32,32", param, ctx)
        shape = tuple(int(x) for x in re.split(r"[,x]", text.replace(" ", "")))
        if any(d < 1 for d in shape):
            self.fail(f"{text!r} has a size below 1; every size must be a positive integer", param, ctx)
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            self.fail(f"{text!r} has {math.prod(shape):,} elements, over the limit of {MAX_INPUT_ELEMENTS:,} for one "
                      "example input (the export runs the model on it); give a small batch, e.g. 1,3,224,224",
                      param, ctx)
        return shape

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "N,C,H,W"


def _input_shapes(shapes: tuple[tuple[int, ...], ...]) -> Any:
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else list(shapes)


_input_shape_help = ("Input shape, sizes separated by commas (batch first), e.g. 1,3,32,32; repeat for a model with "
                     "several inputs.")


# --- export ----------------------------------------------------------------------------------------------


def _print_export(report: ExportReport) -> None:
    console = stdout_console()
    chosen = report.storage
    how = " (smallest that passed verification)" if report.requested_storage == "auto" and report.parity else ""
    console.print(f"wrote {report.path}: {size_text(report.file_bytes)}, storage {chosen}{how}", markup=False)
    exporter = "dynamo (torch.export)" if report.exporter == "dynamo" else "TorchScript"
    line = (f"exporter: torch.onnx {exporter}, opset {report.opset}, "
            f"{'dynamic batch' if report.dynamic_batch else 'fixed batch'}, onnx.checker {report.checker}")
    if report.exporter_note:
        line += f" ({report.exporter_note})"
    console.print(line, markup=False)
    console.print(f"masked weights: {len(report.layers)} layers, {report.kept:,} of {report.params:,} kept "
                  f"(density {report.density:.4g})", markup=False)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("storage")
    for name in ("bytes", "of dense", "B/kept weight"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("")
    dense = report.sizes.get("dense")
    per = report.bytes_per_kept_weight
    for name, n in report.sizes.items():
        note = "written" if name == chosen else report.rejected.get(name, "")
        if not note and name != chosen:
            note = "larger" if report.requested_storage == "auto" else "reference"
        table.add_row(Text(name, style="bold" if name == chosen else ""), Text(f"{n:,}"),
                      Text(f"{100 * n / dense:.3g}%" if dense else "?"),
                      Text(f"{per[name]:.2f}" if name in per else "-"), Text(note))
    console.print(table)
    if report.parity:
        inputs = ", ".join(p.inputs for p in report.parity)
        console.print(f"parity, onnxruntime {report.provider} vs PyTorch ({inputs}): max abs diff "
                      f"{report.max_abs_diff:.3g}, max rel diff {report.max_rel_diff:.3g} "
                      f"(tolerance rtol {report.rtol:g}, atol {report.atol:g}): ok", markup=False)
    else:
        console.print("parity: not checked (--no-verify)", markup=False)
    if chosen != "dense":
        console.print("note: onnxruntime densifies sparse weights when it loads the file; the file is smaller, "
                      "inference is not faster", markup=False)


@click.command("export", context_settings=_CONTEXT)
@click.argument("ticket_path", metavar="TICKET", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("model_arg", metavar="[MODEL]", required=False, default=None)
@click.option("--model", "model_spec", metavar="SPEC", default=None, hidden=True,
              help="MODEL given as an option (older spelling).")
@click.option("--arch", metavar="SPEC", default=None,
              help="Architecture for a state_dict MODEL file (default: the one the ticket records).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a pickled MODEL file (torch.save(model)); this runs code from the file.")
@click.option("-o", "--out", "--onnx", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              metavar="OUT", help="The ONNX file to write (atomically; never replaced without --force). "
                                  "--onnx is the older spelling.")
@click.option("--input-shape", "input_shape", type=ShapeType(), multiple=True, required=True, help=_input_shape_help)
@click.option("--storage", type=click.Choice(STORAGES), default="auto", show_default=True,
              help="How to store the weights: auto picks the smallest file that passes verification.")
@click.option("--opset", type=click.IntRange(7, None), default=None, metavar="N",
              help="ONNX opset (default: the exporter's).")
@click.option("--static-batch", is_flag=True, help="Fix the batch size to the one of --input-shape.")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="auto", show_default=True,
              help="torch.onnx exporter: auto tries dynamo (torch.export) first, then TorchScript.")
@click.option("--no-verify", is_flag=True, help="Do not run the file in onnxruntime to compare with PyTorch.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider for the verification (cuda needs onnxruntime-gpu).")
@click.option("--rtol", type=click.FloatRange(0), default=1e-3, show_default=True, help="Parity tolerance, relative.")
@click.option("--atol", type=click.FloatRange(0), default=1e-5, show_default=True, help="Parity tolerance, absolute.")
@force_option("Replace OUT if it exists.")
@json_option("Print the export report as JSON.")
def export(ticket_path: Path, model_arg: str | None, model_spec: str | None, arch: str | None, trust_pickle: bool,
           out: Path,
           input_shape: tuple[tuple[int, ...], ...], storage: str, opset: int | None, static_batch: bool,
           exporter: str, no_verify: bool, provider: str, rtol: float, atol: float, force: bool,
           as_json: bool) -> None:
    """Apply TICKET to MODEL and write it as ONNX with the masks baked in.

    MODEL takes the same forms as in 'sparsekit prune'; without it, the model the ticket was made from.

    Prints the size of each storage (dense, sparse-initializer, compact), the one written and how far
    onnxruntime's outputs are from PyTorch's. Nothing is written if any check fails.
    """
    check_out(out, force)
    if not ticket_path.is_file():
        raise FileNotFoundError(f"ticket file {ticket_path} does not exist" if not ticket_path.exists()
                                else f"{ticket_path} is not a file")
    if model_arg is not None and model_spec is not None and model_arg != model_spec:
        raise UserError(f"give the model once: MODEL {model_arg!r} and --model {model_spec!r} differ")
    model_spec, arch = ticket_model(ticket_path, model_arg or model_spec, arch)
    net = load_model(model_spec, arch=arch, trust_pickle=trust_pickle)
    report = export_onnx(net, out, input_shape=_input_shapes(input_shape), ticket=ticket_path, opset=opset,
                         dynamic_batch=not static_batch, storage=storage, verify=not no_verify, provider=provider,
                         rtol=rtol, atol=atol, exporter=exporter, overwrite=force)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_export(report)


# --- onnx-check ------------------------------------------------------------------------------------------


def _print_check(c: OnnxCheck) -> None:
    console = stdout_console()
    if c.storage:
        enc = ", ".join(f"{n} {k}" for k, n in sorted(c.storage["encodings"].items()))
        storage = f"{c.storage.get('storage')} ({enc})" if enc else str(c.storage.get("storage"))
    else:
        storage = "dense"
    console.print(f"{c.path}: {size_text(c.file_bytes)}, opset {c.opset}, onnx.checker {c.checker}, storage {storage}",
                  markup=False)
    console.print("inputs: " + "; ".join(f"{n} {shape} {dtype}" for n, shape, dtype in c.inputs), markup=False)
    console.print("outputs: " + "; ".join(f"{n} {shape}" for n, shape in c.outputs), markup=False)
    times = sorted(c.latency_ms)
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    console.print(f"onnxruntime {c.provider}: session creation {c.session_s * 1e3:.1f} ms; latency median "
                  f"{c.median_ms:.3f} ms (min {times[0]:.3f}, p90 {p90:.3f}) over {len(times)} runs", markup=False)


@click.command("onnx-check", context_settings=_CONTEXT)
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input-shape", "input_shape", type=ShapeType(), multiple=True,
              help=_input_shape_help + " Default: the model's, with a symbolic batch set to 1.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider (cuda needs onnxruntime-gpu and a GPU).")
@click.option("--runs", type=click.IntRange(1), default=50, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads.")
@json_option("Print the results as JSON.")
def onnx_check(path: Path, input_shape: tuple[tuple[int, ...], ...], provider: str, runs: int, warmup: int,
               threads: int | None, as_json: bool) -> None:
    """Check FILE with onnx.checker, load it in onnxruntime and time it on random inputs.

    Reports the session creation time (which includes decoding sparse or compact weights) and the
    median latency over --runs runs.
    """
    result = check_onnx(path, input_shape=_input_shapes(input_shape), provider=provider, runs=runs, warmup=warmup,
                        threads=threads)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_check(result)
