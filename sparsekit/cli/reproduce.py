"""``sparsekit reproduce``: run one of the paper's tables as a resumable grid (:func:`sparsekit.reproduce.run`).

Example::

    sparsekit reproduce --list
    sparsekit reproduce 2 --scale tiny --out runs/table2-tiny
    sparsekit reproduce 2 --data cifar10:~/data --out runs/table2 --devices cuda:0,cuda:1
    torchrun --nproc-per-node 8 -m sparsekit reproduce 2 --data cifar10:~/data --out runs/table2

Rerunning the same command skips finished cells and resumes interrupted ones.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import UserError, stdout_console

__all__ = ["reproduce"]


def _split(values: tuple[str, ...]) -> list[str] | None:
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return out or None


def _densities(values: tuple[str, ...]) -> list[float] | None:
    items = _split(values)
    if items is None:
        return None
    out = []
    for v in items:
        try:
            out.append(float(v))
        except ValueError:
            raise UserError(f"--densities: {v!r} is not a number; give final densities (1 - sparsity), "
                            "e.g. --densities 0.01,0.005") from None
    return out


def _list_tables() -> None:
    from rich.table import Table as RichTable

    from sparsekit.reproduce import estimate_gpu_hours, expand, list_tables, scale_table
    from sparsekit.reproduce.runner import TINY_SEEDS

    rt = RichTable(title="The paper's tables (GPU hours: an ESTIMATE at full scale, see below)", show_lines=False)
    for col in ("table", "model", "data", "trainer", "cells", "runs", "jobs", "tiny jobs", "est. GPU h", "what"):
        rt.add_column(col)
    total = 0.0
    for t in list_tables():
        jobs = expand(t)
        hours = estimate_gpu_hours(t, jobs)
        total += hours
        trainers = "+".join(dict.fromkeys(c.trainer for c in t.cells))
        rt.add_row(t.number, t.model, t.dataset, trainers, str(len(t.cells)), str(t.runs), str(len(jobs)),
                   str(len(scale_table(t, "tiny").cells) * TINY_SEEDS), "no GPU" if hours == 0 else f"{hours:.1f}",
                   t.title)
    console = stdout_console()
    console.print(rt)
    console.print(f"All tables: about {total:.0f} GPU hours. The estimate is 3 x forward FLOPs x samples x epochs "
                  "at 1e13 FLOP/s (an A100-class GPU); masks do not make dense kernels faster; expect up to 2x "
                  "either way. Flow tables (5, 6) only draw masks.", markup=False)


@click.command("reproduce", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("table", required=False)
@click.option("--list", "list_", is_flag=True, help="List the tables with their cells and estimated GPU hours.")
@click.option("--data", "data_spec", metavar="SPEC", default=None,
              help="Data spec as for 'sparsekit fit' (cifar10:/path, cifar100:/path, tiny-imagenet:/path, digits, "
                   "synthetic:...). Required at full scale; default at tiny scale: digits:flat=false.")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder: results.csv, summary.md, plots/, cells/. Reruns resume here.")
@click.option("--scale", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="tiny: small networks, digits, a few epochs, the first two densities (minutes on a CPU).")
@click.option("--models", multiple=True, metavar="NAME[,NAME]",
              help="Run the grid on these networks instead of the paper's (sparsekit model names).")
@click.option("--methods", multiple=True, metavar="M[,M]",
              help="Only cells of these methods (er-balanced, rigl, edge-popup, imp, ...).")
@click.option("--densities", multiple=True, metavar="D[,D]", help="Only cells of these final densities (1 - sparsity).")
@click.option("--seeds", type=click.IntRange(1), default=None,
              help="Seeds per cell (default: the paper's runs, 2 at tiny scale).")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Override the epochs of every trainer (edge-popup: per level). Recorded in each cell's config.")
@click.option("--device", default="auto", show_default=True, help="Device of in-process runs (auto, cpu, cuda:1).")
@click.option("--jobs", "-j", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes on --device (e.g. CPU runs).")
@click.option("--devices", default=None, metavar="DEV[,DEV]",
              help="One worker process per device, e.g. cuda:0,cuda:1 (under torchrun: leave out; rank r takes cells "
                   "r::world).")
@click.option("--any-data", is_flag=True, help="Allow a full-scale table on another dataset than the paper's.")
@click.option("--rerun-changed", is_flag=True,
              help="Run cells whose settings changed again (old results move to OUT/superseded/) instead of refusing.")
@click.option("--no-plots", is_flag=True, help="Do not draw plots.")
@click.option("--quiet", "-q", is_flag=True, help="No per-cell lines.")
def reproduce(table: str | None, list_: bool, data_spec: str | None, out: Path | None, scale: str,
              models: tuple[str, ...], methods: tuple[str, ...], densities: tuple[str, ...], seeds: int | None,
              epochs: int | None, device: str, jobs: int, devices: str | None, any_data: bool, rerun_changed: bool,
              no_plots: bool, quiet: bool) -> None:
    """Reproduce a table of the paper (1-21) as a resumable grid of cells x seeds.

    Writes OUT/results.csv (one row per cell and seed), OUT/summary.md (the table laid out like the
    paper's: ours ± 95% CI next to the paper's number) and OUT/plots/. Rerunning skips finished cells
    and resumes interrupted ones exactly. Exit status 1 when a cell failed.
    """
    if list_:
        if table is not None:
            raise UserError("--list takes no TABLE")
        _list_tables()
        return
    if table is None:
        raise UserError("give a TABLE number (1-21), or --list to see them")
    if out is None:
        raise UserError("give --out DIR: the folder the run writes to (and resumes from)")
    from sparsekit.reproduce import run

    echo = (lambda s: None) if quiet else (lambda s: click.echo(s))
    dev_list = _split((devices,)) if devices else None
    result = run(table, out=out, data=data_spec, models=_split(models), methods=_split(methods),
                 densities=_densities(densities), seeds=seeds, scale=scale, device=device, jobs=jobs,
                 devices=dev_list, epochs=epochs, any_data=any_data, rerun_changed=rerun_changed,
                 plots=not no_plots, log=echo, progress=not quiet and scale == "full")
    statuses = [r["status"] for r in result.rows]
    done = statuses.count("done")
    stdout_console().print(
        f"Table {result.table.number}: {done}/{len(statuses)} cell-seeds done ({result.ran} run now, "
        f"{result.skipped} already finished, {result.failed} failed, {result.busy} running elsewhere); "
        f"{out / 'results.csv'}, {out / 'summary.md'}", markup=False)
    if result.failed or "failed" in statuses:
        bad = [f"{r['cell']} seed {r['seed']}" for r in result.rows if r["status"] == "failed"]
        raise UserError(f"{len(bad)} cell-seed(s) failed ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                        f"see {out / 'summary.md'}; rerun to retry them")
