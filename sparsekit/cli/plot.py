"""``sparsekit plot``: a PNG or SVG of one artefact, its kind read from the file.

Example::

    sparsekit plot ticket.safetensors               # per-layer densities and flow repairs -> ticket.png
    sparsekit plot report.json -o report.svg        # the same from 'sparsekit prune --out report.json'
    sparsekit plot runs/history.json                # training curves -> runs/history.png
    sparsekit plot results/results.csv              # accuracy vs density, the paper's points overlaid

The plots are :mod:`sparsekit.plots` (matplotlib: ``pip install sparsekit[plot]``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click

from ..errors import SparsekitError
from ._options import check_out, force_option

__all__ = ["plot", "plot_file"]

_KINDS = ("a ticket file (.safetensors), a ticket report (.json from 'sparsekit prune --out'), a training "
          "history.json, or a results.csv of 'sparsekit reproduce'")


def _paper_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The paper's cells for the tables named in results rows' ``table`` column, and the tables without any."""
    from ..reproduce.paper_numbers import list_paper_tables, paper_numbers

    known = set(list_paper_tables())
    paper: list[dict[str, Any]] = []
    unknown = []
    for t in sorted({str(r.get("table") or "").strip() for r in rows} - {""}):
        key = t[5:].strip() if t.lower().startswith("table") else t
        key = str(int(key)) if key.isdigit() else key
        if key in known:
            paper += paper_numbers(key)
        else:
            unknown.append(t)
    return paper, unknown


def plot_file(path: Path, out: Path | None = None, *, title: str | None = None, metric: str | None = None,
              force: bool = False) -> tuple[Path, str]:
    """Plot the artefact at ``path`` into ``out`` (default: ``path`` with suffix .png); returns (out, what)."""
    from .. import plots

    plots._matplotlib()  # a missing matplotlib is said before any file is read
    suffix = path.suffix.lower()
    if out is None:
        out = path.with_suffix(".png")
    plots._format_of(out)
    check_out(out, force, what="--output")
    if suffix == ".safetensors":
        return plots.plot_ticket(path, out, overwrite=force), "per-layer densities and flow repairs"
    if suffix == ".json":
        data = plots._read_json(path, "file")
        if isinstance(data, list):
            return plots.plot_history(data, out, overwrite=force), "training curves"
        if isinstance(data, dict) and "layers" in data and "totals" in data:
            return plots.plot_ticket(path, out, overwrite=force), "per-layer densities and flow repairs"
        raise SparsekitError(f"{path} is JSON but neither a training history (a list of epoch records) nor a "
                             "ticket report (an object with 'layers' and 'totals')")
    if suffix == ".csv":
        rows = plots.read_results_csv(path)
        metrics = sorted({str(r["metric"]) for r in rows})
        if metric is None:
            if "test_acc" not in metrics and len(metrics) != 1:
                raise SparsekitError(f"{path} has the metrics {metrics}; choose one with --metric")
            metric = "test_acc" if "test_acc" in metrics or not metrics else metrics[0]
        elif metric not in metrics:
            raise SparsekitError(f"{path} has no rows of metric {metric!r}; its metrics: {', '.join(metrics)}")
        paper, unknown = _paper_rows(rows)
        methods = {plots.method_name(r["method"]) for r in rows}  # the paper's points for the methods run
        paper = [p for p in paper if plots.method_name(p["method"]) in methods]
        if unknown:
            warnings.warn(f"no paper numbers for table(s) {', '.join(unknown)}: plotted without the paper's points",
                          stacklevel=2)
        paper = [p for p in paper if p["metric"] == metric]
        what = f"{metric} vs density" + (" with the paper's points" if paper else "")
        return plots.plot_accuracy_vs_density(rows, out, paper=paper, title=title, metric=metric,
                                              overwrite=force), what
    raise SparsekitError(f"cannot tell what {path.name} is from its suffix {suffix or '(none)'!r}: "
                         f"sparsekit plot reads {_KINDS}")


@click.command("plot", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The image to write, .png or .svg (default: PATH with suffix .png).")
@click.option("--title", default=None, help="A title over an accuracy-vs-density plot.")
@click.option("--metric", default=None,
              help="The metric of a results.csv to plot (default: test_acc, or the only metric in the file).")
@force_option("Replace an existing output file.")
def plot(path: Path, out: Path | None, title: str | None, metric: str | None, force: bool) -> None:
    """Plot PATH: a ticket (per-layer densities and flow repairs), a training history.json (loss and
    accuracy curves) or a results.csv (accuracy vs density, mean and 95% CI over seeds, the paper's numbers
    overlaid; Tables 5-6: flow repairs vs density).

    PATH's kind comes from its suffix (.safetensors, .json, .csv) and, for .json, its content. Needs
    matplotlib (pip install sparsekit[plot]).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written, what = plot_file(path, out, title=title, metric=metric, force=force)
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
    click.echo(f"wrote {written} ({what})")
