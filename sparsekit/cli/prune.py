"""``sparsekit prune``: draw Erdős–Rényi masks for a model and print the per-layer report.

Example::

    sparsekit prune torchvision:resnet18 --method pyramidal --density 0.01 --out ticket.safetensors
    sparsekit prune torchvision:resnet18 --method pyramidal --density 0.01 --out report.json
    sparsekit prune sparsekit:mlp --method er-snip --density 0.01 --data digits
    sparsekit prune sparsekit:vgg16 --method er-synflow --density 0.01 -O input_shape=(3,32,32)
    sparsekit prune sparsekit:mlp --method er-from --from imp.safetensors

The command loads the model (:func:`sparsekit.cli._models.load_model`), calls
:func:`sparsekit.prune` and shows :meth:`sparsekit.Ticket.report` as a table, or as JSON with ``--json``.
``--out FILE.safetensors`` saves the ticket (:func:`sparsekit.save_ticket`, optionally with the kept
weights); any other ``--out`` gets the report as JSON.

Methods with inputs (:mod:`sparsekit._data_methods`): ``--data SPEC`` (:func:`sparsekit.data.load_data`)
gives er-snip its batches (the training split) and er-synflow its input shape, and fills a
``sparsekit:`` model's ``num_classes`` and input size from the data; ``--from TICKET`` gives er-from
its source ticket, whose density is the default ``--density``.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.text import Text
from torch import nn

import sparsekit
import sparsekit._data_methods  # noqa: F401  (registers er-snip, er-synflow, er-from)
from sparsekit._io import atomic_write_text
from sparsekit.densities import DEFAULT_DENSITY
from sparsekit.layers import FilterFn, default_filter, include_embeddings
from sparsekit.structures import parse_structure

from . import UserError, stdout_console
from ._models import build_model, load_model, model_options, spec_of, write_state_dict
from ._options import (
    MAX_ROWS,
    SHOWN_AT_ENDS,
    WEIGHTS_DTYPES,
    Col,
    DensityType,
    MethodType,
    all_option,
    check_out,
    force_option,
    json_option,
    parse_options,
    print_table,
    size_text,
)

__all__ = ["prune", "MethodType", "DensityType", "exclude_filter", "print_report", "MAX_ROWS", "SHOWN_AT_ENDS"]

TICKET_SUFFIX = ".safetensors"
OUT_FORMATS = {".safetensors": "the ticket (with --weights kept: and the kept weights)",
               ".pt": "the pruned state_dict (torch.save, loadable with weights_only=True)",
               ".pth": "the pruned state_dict (as .pt)", ".json": "the report as JSON"}
"""What ``prune --out`` writes, by the file's suffix; any other suffix is refused."""


def _compile_patterns(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[re.Pattern]:
    patterns = []
    for value in values:
        try:
            patterns.append(re.compile(value))
        except re.error as e:
            raise click.BadParameter(f"{value!r} is not a regular expression: {e}", ctx, param) from e
    return patterns


MAGNITUDE = {"magnitude": "global", "magnitude-global": "global", "magnitude-layerwise": "layerwise"}
"""``prune --method`` names of :func:`sparsekit.pruners.magnitude` (not ER: masks from the weights' values)."""


class PruneMethodType(MethodType):
    """A registered ER method, or ``magnitude`` / ``magnitude-layerwise`` (parity with torch.nn.utils.prune)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if str(value).strip().lower() in MAGNITUDE:
            return str(value).strip().lower()
        return super().convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join([*sparsekit.list_methods(), "magnitude", "magnitude-layerwise"]) + "]"


def _prune_magnitude(net: nn.Module, method: str, density: float | None, filter_fn: FilterFn | None,
                     **unused: Any) -> sparsekit.Ticket:
    given = [flag for flag, value in unused.items() if value]
    if given:
        raise UserError(f"--method {method} keeps the largest weights; {', '.join(given)} are for ER methods")
    from sparsekit.pruners import magnitude

    return magnitude(net, DEFAULT_DENSITY if density is None else density, scope=MAGNITUDE[method],
                     filter_fn=filter_fn)


def _names_of(module: nn.Module, module_fqn: str) -> list[str]:
    params = [name for name, _ in module.named_parameters(recurse=False)]
    return [module_fqn, *(f"{module_fqn}.{p}" if module_fqn else p for p in params)]


def exclude_filter(patterns: Iterable[re.Pattern], base: FilterFn = default_filter) -> FilterFn:
    """A ``filter_fn`` keeping what ``base`` keeps, minus modules whose name or a parameter name fully
    matches one of ``patterns``."""
    patterns = list(patterns)

    def keep(module: nn.Module, module_fqn: str) -> bool:
        if not base(module, module_fqn):
            return False
        return not any(p.fullmatch(n) for p in patterns for n in _names_of(module, module_fqn))

    return keep


def _check_patterns_match(model: nn.Module, patterns: Sequence[re.Pattern]) -> None:
    """Every ``--exclude`` pattern must match a module or parameter name: a typo should not go unnoticed."""
    names = [n for mname, m in model.named_modules() for n in _names_of(m, mname) if n]
    for p in patterns:
        if not any(p.fullmatch(n) for n in names):
            examples = ", ".join(repr(n) for n in names[:3])
            raise ValueError(f"--exclude {p.pattern!r} matches no module or parameter name (e.g. {examples}); "
                             "a pattern must match a whole name ('.*text.*' matches a substring)")


def _fmt_density(x: float) -> str:
    return f"{x:.4g}"


REPORT_COLUMNS = (Col("layer", right=False, name=True), Col("shape", right=False, drop=5), Col("params", drop=4),
                  Col("target"), Col("realised"), Col("nonzeros"), Col("edges added", drop=3),
                  Col("rows repaired", drop=1), Col("cols repaired", drop=2))
"""The report's columns, named as in ``str(ticket.report())``; repairs go first when the terminal is narrow."""


def _row(r: dict[str, Any]) -> list[str]:
    return [r["fqn"], "×".join(map(str, r["shape"])), f"{r['params']:,}", _fmt_density(r["target_density"]),
            _fmt_density(r["realised_density"]), f"{r['nonzeros']:,}", f"{r['edges_added']:,}",
            f"{r['rows_repaired']:,}", f"{r['cols_repaired']:,}"]


def print_report(report: sparsekit.Report, *, title: str = "", show_all: bool = False) -> None:
    """Print ``report`` as a table with a totals row, fitted to the terminal; long reports are cut in the middle."""
    t = report.totals
    total = [Text("total", style="bold"), "", f"{t['params']:,}", _fmt_density(t["target_density"]),
             Text(_fmt_density(t["realised_density"]), style="bold"), f"{t['nonzeros']:,}", f"{t['edges_added']:,}",
             "", f"{t['pairs_repaired']} pairs"]
    console = stdout_console()
    if title:
        console.print(title, markup=False)
    dropped = print_table(console, REPORT_COLUMNS, [_row(r) for r in report.rows], total=total, show_all=show_all)
    layers = f"{t['layers']} layer{'s' if t['layers'] != 1 else ''}"
    console.print(
        f"global density: target {_fmt_density(t['target_density'])}, realised "
        f"{_fmt_density(t['realised_density'])} ({t['nonzeros']:,} of {t['params']:,} weights in {layers}); "
        f"flow repair added {t['edges_added']:,} edges, repaired {t['pairs_repaired']} (layer, direction) pairs",
        markup=False)
    for line in report.structure_lines() + report.coverage_lines():
        console.print(line, markup=False)
    if dropped:
        console.print(f"(columns {', '.join(dropped)} left out to fit {console.width} columns; --json has them all)",
                      markup=False, style="dim")


def _check_inputs(config: sparsekit.Method, density: float | None, data_spec: str | None,
                  source: Path | None) -> None:
    """``--data``/``--from``/``--density`` as the method needs them, before any slow work."""
    info = config.info
    if "data" in info.inputs and data_spec is None:
        raise UserError(f"--method {info.name} scores the network on data: give --data SPEC (e.g. --data digits)")
    if data_spec is not None and "data" not in info.inputs and "input_shape" not in info.options:
        raise UserError(f"--data is for methods that use data (er-snip; er-synflow takes its input shape from it), "
                        f"not {info.name}")
    if "ticket" in info.inputs and source is None:
        raise UserError(f"--method {info.name} takes its layerwise densities from a ticket: give --from TICKET")
    if source is not None and "ticket" not in info.inputs:
        raise UserError(f"--from is the source ticket of er-from; --method {info.name} does not take one")


def _title(spec: str, report: sparsekit.Report) -> str:
    t = report.totals
    options = "".join(f", {k}={v!r}" for k, v in t["method_options"].items())
    extra = (", exact" if t["exact"] else "") + (f", structure {t['structure']}"
                                                 if t.get("structure", "element") != "element" else "")
    return (f"{spec}: {t['method']}{options}, density {_fmt_density(t['target_density'])}, seed {t['seed']}, "
            f"flow {t['flow'] or 'none'}{extra}")


@click.command("prune", context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@click.option("-m", "--method", type=PruneMethodType(), default="er-balanced", show_default=True,
              help="Layerwise density scheme (short names such as 'pyramidal' work; see 'sparsekit methods'), or "
                   "magnitude / magnitude-layerwise: keep the largest weights (as torch.nn.utils.prune).")
@click.option("-d", "--density", type=DensityType(), default=None,
              help=f"Global fraction of weights to keep, in (0, 1] (density = 1 - sparsity). Default: "
                   f"{DEFAULT_DENSITY:g} (er-from: the --from ticket's density).")
@click.option("-s", "--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True, metavar="INT",
              help="Seed of the counter RNG; the same seed gives the same masks on every device.")
@click.option("--flow", type=click.Choice(["repair", "resample", "none"], case_sensitive=False), default="repair",
              show_default=True, help="Flow preservation: random addition, rejection sampling, or none.")
@click.option("-O", "--option", "method_options", multiple=True, metavar="KEY=VALUE", callback=parse_options,
              help="Option of the method, e.g. -O redistribute=False for er-balanced (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX", callback=_compile_patterns,
              help="Leave out modules whose name or parameter name fully matches REGEX (repeatable).")
@click.option("--dense", multiple=True, metavar="NAME",
              help="Keep this layer dense (parameter or module name, or a regex); it counts towards the "
                   "density (repeatable).")
@click.option("--exact", is_flag=True, help="Keep exactly round(p_l * m_l) weights per layer.")
@click.option("--structure", default="element", show_default=True, metavar="STRUCTURE",
              help="How each layer's mask is drawn at its density: element (Bernoulli ER), block:HxW (ER over "
                   "HxW blocks, e.g. block:4x4), fanin (every neuron keeps round(p_l * fan_in) inputs) or nm:N:M "
                   "(e.g. nm:2:4; layers are N:M or dense, so density >= N/M).")
@click.option("--data", "data_spec", metavar="SPEC", default=None,
              help="Data for methods that need it: er-snip scores on its training split, er-synflow takes its "
                   "input shape (digits, synthetic[:...], cifar10:ROOT, ...; nothing is downloaded).")
@click.option("--from", "source", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="TICKET",
              help="Source ticket file of er-from (e.g. from 'sparsekit fit imp'): its layerwise densities are used.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="By suffix: FILE.safetensors the ticket (see 'sparsekit info'), FILE.pt or .pth the pruned "
                   "state_dict (in the input's layout; torch.load(weights_only=True) reads it), FILE.json "
                   "the report.")
@force_option("Replace FILE given to --out if it exists.")
@click.option("--weights", type=click.Choice(["kept"]), default=None,
              help="With --out FILE.safetensors: also store the kept weight values and the unmasked "
                   "state_dict entries (a complete model at about density times the dense size).")
@click.option("--weights-dtype", type=click.Choice(sorted(WEIGHTS_DTYPES)), default=None,
              help="Store the floating-point weights of --weights kept in half precision.")
@click.option("--include-embeddings", "include_emb", is_flag=True,
              help="Also mask embeddings and the output heads tied to them (excluded by default).")
@click.option("--strict", is_flag=True,
              help="Fail when a parameter with 2+ dimensions is covered by no rule (default: a warning naming it).")
@json_option("Print the report as JSON instead of a table.")
@all_option()
def prune(model: str, arch: str | None, trust_pickle: bool, method: str, density: float, seed: int, flow: str,
          method_options: dict[str, Any], exclude: list[re.Pattern], dense: tuple[str, ...], exact: bool,
          structure: str, data_spec: str | None, source: Path | None, out: Path | None, force: bool,
          weights: str | None, weights_dtype: str | None, include_emb: bool, strict: bool, as_json: bool,
          show_all: bool) -> None:
    """Draw Erdős–Rényi masks for MODEL and print the per-layer report.

    MODEL is sparsekit:NAME[:KEY=VALUE,...] (the paper's networks, e.g. sparsekit:vgg16),
    torchvision:NAME[:KEY=VALUE,...] (e.g. torchvision:resnet18:num_classes=10),
    package.module:factory[:KEY=VALUE,...], or a model file: torch.export (.pt2), a state_dict
    (torch.save(model.state_dict()); its layer kinds are read from the tensors' shapes and names, or give
    --arch), or TorchScript or a pickled module (only with --trust-pickle: they run code).

    The density defaults to 0.01. --out writes by suffix: .safetensors the ticket, .pt/.pth the pruned
    state_dict, .json the report.
    """
    config = None
    try:
        structure = str(parse_structure(structure))  # fails before the model loads
    except ValueError as e:
        raise UserError(f"--structure: {e}") from None
    if method not in MAGNITUDE:
        config = sparsekit.Method(method, method_options)  # unknown options fail before the model loads
        _check_inputs(config, density, data_spec, source)
    elif method_options or data_spec or source:
        raise UserError(f"--method {method} keeps the largest weights and takes no -O, --data or --from")
    suffix = out.suffix.lower() if out is not None else ""
    if out is not None:  # fail before the (possibly slow) model loading
        check_out(out, force)
    if out is not None and suffix not in OUT_FORMATS:
        raise UserError(f"--out {out}: the suffix says what to write; use "
                        + "; ".join(f"{s} for {what}" for s, what in OUT_FORMATS.items()))
    to_ticket = suffix == TICKET_SUFFIX
    if weights is not None and not to_ticket:
        raise UserError(f"--weights {weights} needs --out FILE{TICKET_SUFFIX} (a ticket file)")
    if weights_dtype is not None and weights is None:
        raise UserError("--weights-dtype needs --weights kept")
    started = time.perf_counter()
    inputs: dict[str, Any] = {}  # method inputs and options taken from --data/--from
    if data_spec is not None:
        from sparsekit.data import load_data

        data = load_data(data_spec, trust_pickle=trust_pickle)
        net = build_model(model, data, arch=arch, trust_pickle=trust_pickle)
        if config is not None and "data" in config.info.inputs:
            inputs["data"] = data.train
        if config is not None and "input_shape" in config.info.options and "input_shape" not in config.options:
            inputs["input_shape"] = tuple(data.input_shape)
    else:
        net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if source is not None:
        inputs["ticket"] = source
    loaded_s = time.perf_counter() - started
    filter_fn = include_embeddings if include_emb else None
    if exclude:
        _check_patterns_match(net, exclude)
        filter_fn = exclude_filter(exclude, include_embeddings if include_emb else default_filter)
    if density is not None:  # otherwise the method's own (er-from: the source ticket's)
        inputs["density"] = density
    with warnings.catch_warnings(record=True) as caught:  # shown as one line each, not as Python warnings
        warnings.simplefilter("always")
        if config is None:
            ticket = _prune_magnitude(net, method, density, filter_fn, **{"--dense": dense, "--exact": exact,
                                                                          "--seed": seed != 0,
                                                                          "--flow": flow.lower() != "repair",
                                                                          "--structure": structure != "element"})
        else:
            ticket = sparsekit.prune(net, config, seed=seed, flow=flow.lower(), filter_fn=filter_fn, dense=dense,
                                     exact=exact, strict=strict, structure=structure, **inputs)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    ticket.model_spec = {"spec": spec_of(net, model), "arch": arch}
    report = ticket.report()
    note = ""
    if out is not None:
        if to_ticket:
            sparsekit.save_ticket(ticket, out, weights=weights, overwrite=force,
                                  weights_dtype=WEIGHTS_DTYPES[weights_dtype] if weights_dtype else None)
            what = "ticket"
        elif suffix == ".json":
            atomic_write_text(out, report.to_json() + "\n", overwrite=force)
            what = "report"
        else:
            what = f"pruned state_dict ({write_state_dict(net, out, overwrite=force)} tensors)"
        note = f"; {what} written to {out}, {size_text(out.stat().st_size)}"
    if as_json:
        click.echo(report.to_json())
        if note:
            click.echo(note[2:], err=True)
        return
    default = ""
    if density is None and source is None:
        default = f" (the default density {DEFAULT_DENSITY:g}; set it with --density)"
    print_report(report, title=_title(model, report) + default, show_all=show_all)
    stdout_console().print(f"pruned in {ticket.elapsed_s:.2f} s (model loaded in {loaded_s:.2f} s){note}",
                           markup=False)
