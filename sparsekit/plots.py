"""Plots of sparsekit's artefacts, as PNG or SVG files a user can drop into a paper.

* :func:`plot_accuracy_vs_density`: test accuracy against density (log axis) per method, the mean over
  seeds with a 95% confidence interval, the paper's published points overlaid (paper §3, Tables 2-4,
  7-10, 16-21); from the rows of a ``results.csv`` of ``sparsekit reproduce`` (:func:`read_results_csv`).
* :func:`plot_layer_densities`: the per-layer density profile of several schemes for one model
  (paper §3 and App. A.14, Fig. 6); works on meta-device models.
* :func:`plot_ticket`: a ticket's per-layer densities (target and realised) and the edges flow repair
  added to each layer (App. A.1, Tables 5-6), read from a Ticket, a ticket file (header only, no masks
  are rebuilt, nothing in it runs) or the JSON report of ``sparsekit prune --out report.json``.
* :func:`plot_history`: training curves (loss and accuracy against epoch, train and test) from a
  :class:`~sparsekit.History` or the ``history.json`` the training engine writes.

Each ``plot_*`` function has a ``*_figure`` twin that returns the matplotlib ``Figure`` without writing
(tests read the plotted data back from it). matplotlib is an optional dependency
(``pip install sparsekit[plot]``), imported only when a figure is drawn; figures are drawn on their own
Agg canvas (the user's pyplot backend and state are not touched). Files are written atomically (a
temporary file renamed into place) and are reproducible: the same input gives the same bytes (no
dates or version strings in the metadata, a fixed SVG id salt).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_bytes, check_writable_target
from ._safety import check_regular_file
from ._stats import mean_ci
from ._stats import t_quantile_975 as _t975  # noqa: F401 (the quantile used by mean_ci95)
from .errors import SparsekitError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import nn

    from .ticket import Ticket

__all__ = [
    "plot_accuracy_vs_density", "accuracy_figure",
    "plot_layer_densities", "layer_densities_figure",
    "plot_ticket", "ticket_figure",
    "plot_history", "history_figure",
    "read_results_csv", "read_history", "mean_ci95", "RESULTS_COLUMNS", "FORMATS",
]

#: Columns of ``results.csv`` as ``sparsekit reproduce`` writes them, in order.
RESULTS_COLUMNS = ("table", "cell", "model", "dataset", "method", "density", "source_density", "seed", "metric",
                   "value", "paper_value", "paper_ci", "status", "epochs", "wall_s", "history", "ticket")
_FLOAT_COLUMNS = ("density", "source_density", "value", "paper_value", "paper_ci", "wall_s")
_INT_COLUMNS = ("seed", "epochs")

_METRIC_LABELS = {"test_acc": "test accuracy (%)", "repairs": "edges added by flow repair"}

#: Output formats, chosen by the file's suffix.
FORMATS = (".png", ".svg")

_MAX_TEXT_BYTES = 256 * 2**20  # results.csv, history.json and report files larger than this are refused
_DPI = 150
_SIZE = (6.4, 4.2)


# --------------------------------------------------------------------------------------------------
# matplotlib, files


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.ticker  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install sparsekit[plot]") from None
    return matplotlib


def _new_figure(nrows: int = 1, *, height: float | None = None, width: float | None = None,
                sharex: bool = False) -> tuple[Figure, Any]:
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width or _SIZE[0], height or _SIZE[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, axes


def _format_of(out: str | os.PathLike) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported plot file {str(out)!r}: give a name ending in .png or .svg")
    return suffix[1:]


def save_figure(fig: Figure, out: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``fig`` to ``out`` (PNG or SVG by suffix) atomically and reproducibly; returns the path.

    Raises:
        ValueError: the suffix is not .png or .svg.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    fmt = _format_of(out)
    path = check_writable_target(out, overwrite=overwrite, what="plot")
    mpl = _matplotlib()
    buf = io.BytesIO()
    metadata: dict[str, Any] = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with mpl.rc_context({"svg.hashsalt": "sparsekit", "svg.fonttype": "path"}):
        fig.savefig(buf, format=fmt, dpi=_DPI, metadata=metadata)
    return atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def _read_text(path: str | os.PathLike, what: str, encoding: str = "utf-8") -> str:
    p = check_regular_file(path, what)
    size = p.stat().st_size
    if size > _MAX_TEXT_BYTES:
        raise SparsekitError(f"{what} {p} is {size:,} bytes, more than the {_MAX_TEXT_BYTES:,} sparsekit reads")
    try:
        return p.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise SparsekitError(f"{what} {p} is not UTF-8 text") from None


def _read_json(path: str | os.PathLike, what: str) -> Any:
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise SparsekitError(f"{what} {path} is not valid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None


# --------------------------------------------------------------------------------------------------
# statistics


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and half-width of its two-sided 95% confidence interval (Student's t over seeds).

    The half-width is None for a single value (no interval can be given, none is drawn).
    """
    mean, half, _ = mean_ci(values, "mean_ci95")
    return mean, half


# --------------------------------------------------------------------------------------------------
# results.csv


def _typed(value: str, column: str, where: str) -> Any:
    if column in _FLOAT_COLUMNS or column in _INT_COLUMNS:
        if value.strip() == "":
            return None
        try:
            number = int(value) if column in _INT_COLUMNS else float(value)
        except ValueError:
            kind = "an integer" if column in _INT_COLUMNS else "a number"
            raise SparsekitError(f"{where}: column {column!r} is {value[:40]!r}, not {kind}") from None
        if isinstance(number, float) and not math.isfinite(number):
            return None if math.isnan(number) else number
        return number
    return value


def read_results_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` (``sparsekit reproduce``), typed.

    ``density``, ``source_density``, ``value``, ``paper_value``, ``paper_ci`` and ``wall_s`` become floats,
    ``seed`` and ``epochs`` ints, empty cells None; the other columns stay strings; columns beyond
    :data:`RESULTS_COLUMNS` are kept as strings.

    Raises:
        SparsekitError: a column is missing, a number does not parse, or a row has too many fields.
        FileNotFoundError: no file at ``path``.
    """
    text = _read_text(path, "results file", encoding="utf-8-sig")  # a spreadsheet's byte-order mark is dropped
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in RESULTS_COLUMNS if c not in columns]
    if missing:
        raise SparsekitError(f"{path} is not a results.csv of sparsekit reproduce: columns {missing} are missing")
    rows = []
    for n, raw in enumerate(reader, start=2):
        where = f"{path} line {n}"
        if None in raw:
            raise SparsekitError(f"{where}: more fields than the header's {len(columns)}")
        rows.append({k: _typed(v if v is not None else "", k, where) for k, v in raw.items()})
    return rows


# --------------------------------------------------------------------------------------------------
# accuracy vs density


#: one legend entry for one method under two names: the paper files use the registered ``er-from`` for
#: "IMP (ER)", ``sparsekit reproduce`` names the cell ``er-imp``
_SAME_METHOD = {"er-from": "er-imp"}


def method_name(method: object) -> str:
    """One name per method, whichever of its names a results or paper file uses (``er-from`` -> ``er-imp``)."""
    return _SAME_METHOD.get(str(method), str(method))


def _series_key(row: Mapping[str, Any]) -> str:
    """The legend label of a row's method: rigl/edge-popup say what they start from."""
    label = method_name(row.get("method", ""))
    init = row.get("init") or ""
    src = row.get("source_density")
    extra = [init] if init and init != "dense" else []
    if src not in (None, "") and float(src) < 1:
        extra.append(f"from density {float(src):g}")
    elif init == "dense":
        extra.append("from dense")
    return f"{label} ({', '.join(extra)})" if extra else label


def _float_or_none(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _last_per_seed(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per (model, dataset, series, density, seed): a seed listed twice (a rerun cell) counts once, the
    later row wins, with a warning. Rows without a seed are all kept."""
    last: dict[tuple[Any, ...], int] = {}
    for i, r in enumerate(rows):
        if r.get("seed") in (None, ""):
            last[("row", i)] = i
        else:
            last[(str(r["model"]), str(r.get("dataset") or ""), _series_key(r), float(r["density"]),
                  str(r["seed"]))] = i
    if len(last) < len(rows):
        warnings.warn(f"{len(rows) - len(last)} rows repeat a (method, density, seed) of an earlier row; the later "
                      "row is plotted", stacklevel=3)
    return [rows[i] for i in sorted(last.values())]


def _keys(done: list[Mapping[str, Any]], paper_rows: list[Mapping[str, Any]],
          panels: list[tuple[str, str]]) -> list[str]:
    """The legend labels of all series, ours and the paper's (for the plotted panels), sorted."""
    models = {m for m, _d in panels}
    theirs = {_series_key(p) for p in paper_rows if str(p.get("model")) in models}
    return sorted({_series_key(r) for r in done} | theirs)


def accuracy_figure(rows: Iterable[Mapping[str, Any]], *, paper: Iterable[Mapping[str, Any]] | None = None,
                    title: str | None = None, metric: str = "test_acc") -> Figure:
    """The figure of :func:`plot_accuracy_vs_density` (not written to a file)."""
    rows = [r for r in rows if r.get("metric", metric) == metric]
    if not rows:
        raise SparsekitError(f"no rows with metric {metric!r} to plot")
    for r in rows:
        for key in ("model", "method", "density"):
            if key not in r:
                raise SparsekitError(f"a row has no {key!r} (columns: {sorted(r)}); rows are results.csv rows")
    unfinished = [r for r in rows if _float_or_none(r.get("value")) is None]
    done = [r for r in rows if _float_or_none(r.get("value")) is not None]
    if unfinished:
        warnings.warn(f"{len(unfinished)} of {len(rows)} rows have no value yet (unfinished cells); they are not "
                      "plotted", stacklevel=2)
    if not done:
        raise SparsekitError(f"none of the {len(rows)} rows has a value yet: nothing to plot")
    no_density = [r for r in done if _float_or_none(r["density"]) is None]
    if no_density:
        warnings.warn(f"{len(no_density)} rows have no density (e.g. {_series_key(no_density[0])}); they are not "
                      "plotted", stacklevel=2)
        done = [r for r in done if _float_or_none(r["density"]) is not None]
        if not done:
            raise SparsekitError("no row has a density: nothing to plot against density")
    bad = [r for r in done if not 0 < float(r["density"]) <= 1]
    if bad:
        raise SparsekitError(f"density {bad[0]['density']!r} of {_series_key(bad[0])} is outside (0, 1]")
    done = _last_per_seed(done)
    panels = sorted({(str(r["model"]), str(r.get("dataset") or "")) for r in done})
    paper_rows = [p for p in (paper or ()) if p.get("metric", metric) == metric
                  and _float_or_none(p.get("value")) is not None]
    if metric == "test_acc" and paper_rows and max(float(r["value"]) for r in done) <= 1.0 \
            and max(float(p["value"]) for p in paper_rows) > 1.0:
        warnings.warn("all test accuracies are <= 1 while the paper's are in percent: results.csv holds percent "
                      "(a fraction 0.93 would plot as 0.93 %)", stacklevel=2)
    fig, axes = _new_figure(len(panels), height=_SIZE[1] * (1 if len(panels) == 1 else 0.75 * len(panels)),
                            width=_SIZE[0] + 2.2)
    mpl = _matplotlib()
    keys = _keys(done, paper_rows, panels)
    colours = mpl.colormaps["tab10" if len(keys) <= 10 else "tab20"].colors
    colour = {k: colours[i % len(colours)] for i, k in enumerate(keys)}
    ylabel = _METRIC_LABELS.get(metric, metric)
    for ax, (model, dataset) in zip(axes, panels, strict=True):
        mine = [r for r in done if (str(r["model"]), str(r.get("dataset") or "")) == (model, dataset)]
        seeds: dict[str, int] = {}
        for key in sorted({_series_key(r) for r in mine}):
            by_density: dict[float, list[float]] = {}
            for r in mine:
                if _series_key(r) == key:
                    by_density.setdefault(float(r["density"]), []).append(float(r["value"]))
            xs = sorted(by_density)
            stats = [mean_ci95(by_density[x]) for x in xs]
            ys = [m for m, _ in stats]
            err = [c if c is not None else 0.0 for _, c in stats]
            seeds[key] = max(len(v) for v in by_density.values())
            bars = ax.errorbar(xs, ys, yerr=err if any(err) else None, color=colour[key], marker="o", markersize=4,
                               linewidth=1.5, capsize=3, label=f"{key} (ours)")
            _tag(bars, f"ours:{key}")
        theirs = [p for p in paper_rows if (str(p.get("model")), str(p.get("dataset") or "")) == (model, dataset)]
        other_data = ""
        if not theirs:  # e.g. a tiny-scale run on digits: the paper's numbers for this model, labelled with their data
            theirs = [p for p in paper_rows if str(p.get("model")) == model]
            other_data = ", ".join(sorted({str(p.get("dataset") or "?") for p in theirs}))
        for key in sorted({_series_key(p) for p in theirs}):
            at: dict[float, tuple[float, float | None]] = {}
            for p in theirs:  # one point per density: the same cell in two tables (2 and 9) is drawn once,
                if _series_key(p) == key:  # from the table that prints its ± (the appendix one)
                    d, v, c = float(p["density"]), float(p["value"]), _float_or_none(p.get("ci"))
                    if d not in at or (at[d][1] is None and c is not None):
                        at[d] = (v, c)
            pts = sorted((d, v, c) for d, (v, c) in at.items())
            xs, ys, cis = [x for x, _, _ in pts], [y for _, y, _ in pts], [c or 0.0 for _, _, c in pts]
            bars = ax.errorbar(xs, ys, yerr=cis if any(cis) else None, color=colour[key], marker="D", markersize=6,
                               markerfacecolor="none", linestyle=":", linewidth=1, capsize=3,
                               label=f"{key} (paper{', ' + other_data if other_data else ''})")
            _tag(bars, f"paper:{key}")
        ax.set_xscale("log")
        ticks = sorted({float(r["density"]) for r in mine} | {float(p["density"]) for p in theirs})
        if len(ticks) <= 12:  # label the densities that were run (a log axis alone labels only powers of ten)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
            ax.xaxis.set_minor_locator(_matplotlib().ticker.NullLocator())
        ax.set_xlabel("density (fraction of weights kept, log scale)")
        ax.set_ylabel(ylabel)
        if metric == "test_acc":  # few seeds give Student-t intervals far beyond what accuracy can be
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(lo, 0.0), min(hi, 100.0))
        shown = f"{model} on {dataset}" if dataset else model
        ax.set_title(shown + (f" (paper points: {other_data})" if other_data else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        _method_legend(ax, {k: colour[k] for k in keys if any(_series_key(r) == k for r in mine + theirs)},
                       max_seeds=max(seeds.values()) if seeds else 1, paper=bool(theirs))
    if title:
        fig.suptitle(title)
    return fig


def _tag(bars: Any, gid: str) -> None:
    """Name an errorbar's data line ``gid`` and its interval segments ``ci:gid`` (tests and SVG readers find them)."""
    data_line, _caps, segments = bars.lines
    data_line.set_gid(gid)
    for collection in segments:
        collection.set_gid(f"ci:{gid}")


def _method_legend(ax: Any, colours: Mapping[str, Any], *, max_seeds: int, paper: bool) -> None:
    """One entry per method (its colour) and one per source (ours: dots and solid lines; paper: open diamonds),
    outside the axes on the right."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=2.5, label=k) for k, c in colours.items()]
    ours = "ours: mean" + (f" ± 95% CI ({max_seeds} seeds)" if max_seeds > 1 else " (1 seed)")
    handles.append(Line2D([], [], color="0.3", marker="o", markersize=4, linewidth=1.5, label=ours))
    if paper:
        handles.append(Line2D([], [], color="0.3", marker="D", markerfacecolor="none", linestyle=":", label="paper"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_accuracy_vs_density(rows: Iterable[Mapping[str, Any]], out: str | os.PathLike, *,
                             paper: Iterable[Mapping[str, Any]] | None = None, title: str | None = None,
                             metric: str = "test_acc", overwrite: bool = True) -> Path:
    """Test accuracy against density per method: mean over seeds with a 95% CI (paper §3 Tables 2-3).

    Args:
        rows: results rows (``read_results_csv``) with at least model, method, density, seed, metric and
            value (accuracy in percent); one panel per (model, dataset), one line per method (``rigl`` and
            ``edge-popup`` rows are split by the ``init``/``source_density`` they start from). Rows without a
            value (unfinished cells) are left out with a warning.
        out: the file, ``.png`` or ``.svg``.
        paper: rows of :func:`sparsekit.reproduce.paper_numbers.paper_numbers`; those of the plotted models
            and datasets are overlaid as open diamonds with the paper's ± as error bars. A panel whose data
            the paper has no numbers for (a tiny-scale run on digits) shows the paper's numbers for that
            model on its own data, named in the panel title and the legend.
        title: a title over the figure.
        metric: which metric of the rows to plot.
        overwrite: replace an existing ``out``.

    Returns:
        The path written.
    """
    return save_figure(accuracy_figure(rows, paper=paper, title=title, metric=metric), out, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# layer densities


def _short(fqn: str, width: int = 22) -> str:
    return fqn if len(fqn) <= width else "…" + fqn[-(width - 1):]


def _layer_axis(ax: Any, names: Sequence[str]) -> None:
    ax.set_xlabel("layer (input to output)")
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=70, ha="right", fontsize=6)
    else:
        ax.set_xlabel(f"layer index (input to output; {len(names)} layers)")


def layer_densities_figure(model: nn.Module | str, methods: Sequence[str], density: float, **options: Any) -> Figure:
    """The figure of :func:`plot_layer_densities` (not written to a file)."""
    from .densities import layer_densities

    if isinstance(methods, str):
        methods = [methods]
    if not methods:
        raise ValueError("methods must name at least one density scheme, e.g. ['er-erk', 'er-balanced']")
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        import torch

        from .models import get_model

        with torch.device("meta"):
            model = get_model(model)
    profiles = {m: layer_densities(model, m, density, **options) for m in methods}
    names = list(next(iter(profiles.values())))
    fig, (ax,) = _new_figure(1, height=_SIZE[1] + (0.8 if len(names) <= 40 else 0))
    for i, (method, dens) in enumerate(profiles.items()):
        ax.plot(range(len(names)), [dens[n] for n in names], marker="os^vDP*X"[i % 8],
                markersize=4 if len(names) <= 40 else 2, linewidth=1.3, label=method, gid=f"method:{method}")
    ax.set_yscale("log")
    ax.set_ylabel("layer density (log scale)")
    ax.set_title(f"{name}: per-layer densities at global density {density:g}", fontsize=10)
    _layer_axis(ax, names)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_layer_densities(model: nn.Module | str, methods: Sequence[str], density: float, out: str | os.PathLike, *,
                         overwrite: bool = True, **options: Any) -> Path:
    """The per-layer density profiles of density schemes for one model (paper §3, App. A.14 Fig. 6).

    Args:
        model: a module (meta-device models work: no weights are read) or a :mod:`sparsekit.models` name.
        methods: registered methods, e.g. ``["er-uniform", "er-erk", "er-balanced", "er-pyramidal"]``
            (er-snip and er-synflow need data and a real model; pass ``data=`` in ``options``).
        density: the global density.
        out: the file, ``.png`` or ``.svg``.
        options: passed to :func:`sparsekit.layer_densities` for every method.
    """
    return save_figure(layer_densities_figure(model, methods, density, **options), out, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# tickets


def _ticket_layers(ticket_or_path: Ticket | str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-layer rows (fqn, params, target, realised, edges_added, rows/cols repaired) and a summary."""
    from .ticket import Ticket

    if isinstance(ticket_or_path, Ticket):
        report = ticket_or_path.report()
        t = report.totals
        return report.rows, {"method": t["method"], "density": t["target_density"], "seed": t["seed"],
                             "flow": t["flow"], "kind": ticket_or_path.kind}
    if not isinstance(ticket_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a Ticket or the path of a ticket file, got {type(ticket_or_path).__name__}")
    path = Path(ticket_or_path)
    if path.suffix.lower() == ".json":
        data = _read_json(path, "ticket report")
        if not (isinstance(data, dict) and isinstance(data.get("layers"), list)
                and isinstance(data.get("totals"), dict)):
            raise SparsekitError(f"{path} is not a ticket report (sparsekit prune --out report.json): expected an "
                                 "object with 'layers' and 'totals'")
        rows = []
        for i, r in enumerate(data["layers"]):
            try:
                rows.append({"fqn": str(r["fqn"]), "params": int(r["params"]),
                             "target_density": float(r["target_density"]),
                             "realised_density": float(r["realised_density"]), "edges_added": int(r["edges_added"]),
                             "rows_repaired": int(r.get("rows_repaired", 0)),
                             "cols_repaired": int(r.get("cols_repaired", 0))})
            except (KeyError, TypeError, ValueError) as e:
                raise SparsekitError(f"{path}: layer {i} of the report is malformed ({e.__class__.__name__}: "
                                     f"{str(e)[:60]})") from None
        t = data["totals"]
        return rows, {"method": t.get("method"), "density": t.get("target_density"), "seed": t.get("seed"),
                      "flow": t.get("flow"), "kind": t.get("kind", "")}
    from .formats.ticket_file import read_ticket_metadata

    header = read_ticket_metadata(path)  # validated header only: no tensors read, no masks built
    rows = [{"fqn": r.fqn, "params": r.numel, "target_density": r.target_density,
             "realised_density": r.realised_density, "edges_added": r.edges_added, "rows_repaired": r.rows_repaired,
             "cols_repaired": r.cols_repaired} for r in header.records]
    t = header.ticket
    return rows, {"method": t.get("method"), "density": t.get("density"), "seed": header.seed, "flow": header.flow,
                  "kind": header.kind}


def ticket_figure(ticket_or_path: Ticket | str | os.PathLike) -> Figure:
    """The figure of :func:`plot_ticket` (not written to a file)."""
    rows, info = _ticket_layers(ticket_or_path)
    if not rows:
        raise SparsekitError("the ticket has no layers to plot")
    names = [r["fqn"] for r in rows]
    xs = list(range(len(rows)))
    fig, (top, bottom) = _new_figure(2, height=_SIZE[1] * 1.6, sharex=True)
    target = [r["target_density"] for r in rows]
    realised = [r["realised_density"] for r in rows]
    top.plot(xs, target, marker="o", markersize=4, linewidth=1.3, label="target", gid="target")
    top.plot(xs, realised, marker="x", markersize=5, linestyle="--", linewidth=1, label="realised", gid="realised")
    positive = [v for v in target + realised if v > 0]
    if positive and max(positive) / min(positive) > 20:
        top.set_yscale("log")
        top.set_ylabel("layer density (log scale)")
    else:
        top.set_ylabel("layer density")
        top.set_ylim(0, min(1.05, 1.15 * max(positive or [1.0])))
        top.ticklabel_format(axis="y", useOffset=False, style="plain")
    top.grid(True, which="both", alpha=0.3)
    top.legend(fontsize=8)
    edges = [r["edges_added"] for r in rows]
    bottom.bar(xs, edges, color="tab:red", gid="edges_added")
    bottom.set_ylabel("edges added by flow repair")
    corrected = sum((r["rows_repaired"] > 0) + (r["cols_repaired"] > 0) for r in rows)
    flow = info.get("flow")
    note = (f"flow={flow}: {sum(edges):,} edges added, {corrected} (layer, direction) pairs repaired"
            if flow else "no flow repair (flow=None)")
    bottom.set_title(note, fontsize=9)
    if not any(edges):
        bottom.set_ylim(0, 1)
        bottom.yaxis.set_major_locator(_matplotlib().ticker.MaxNLocator(integer=True))
        bottom.text(0.5, 0.5, "no edges added in any layer", transform=bottom.transAxes, ha="center", va="center",
                    color="0.4")
    bottom.grid(True, axis="y", alpha=0.3)
    _layer_axis(bottom, names)
    density = info.get("density")
    head = f"{info.get('kind') or ''} ticket {info.get('method') or ''}".strip()
    if isinstance(density, (int, float)):
        head += f", density {density:.4g}"
    if info.get("seed") is not None:
        head += f", seed {info['seed']}"
    top.set_title(head, fontsize=10)
    return fig


def plot_ticket(ticket_or_path: Ticket | str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """A ticket's per-layer densities (target and realised) and flow repairs per layer (App. A.1, Tables 5-6).

    Args:
        ticket_or_path: a :class:`~sparsekit.Ticket`, a ticket file (``.safetensors``: only its validated
            header is read, no masks are rebuilt) or a ticket report (``sparsekit prune --out report.json``).
        out: the file, ``.png`` or ``.svg``.
    """
    return save_figure(ticket_figure(ticket_or_path), out, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# training history


def read_history(history_or_path: Any) -> list[dict[str, Any]]:
    """Epoch records from a :class:`~sparsekit.History`, a list of dicts, or a ``history.json`` file.

    Each record has ``epoch`` (0-based, as the engine writes it), ``train_loss``, ``train_acc`` (a fraction)
    and optionally ``eval_loss``, ``eval_acc``.

    Raises:
        SparsekitError: the file is not JSON or not a list of epoch records.
    """
    from .train import History

    where = "history"
    if isinstance(history_or_path, History):
        records: Any = history_or_path.to_dicts()
    elif isinstance(history_or_path, (str, os.PathLike)):
        where = str(history_or_path)
        records = _read_json(history_or_path, "history file")
    else:
        records = history_or_path
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SparsekitError(f"{where} is not a training history: expected a JSON list of epoch records "
                             "(the history.json that fit_weak/fit_strong/rewire write with checkpoint_dir)")
    if not records:
        raise SparsekitError(f"{where} has no epochs to plot")
    for i, r in enumerate(records):
        for key in ("epoch", "train_loss", "train_acc"):
            v = r.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SparsekitError(f"{where}: epoch record {i} has no number {key!r} (keys: {sorted(r)[:8]})")
        for key in ("eval_loss", "eval_acc"):
            v = r.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SparsekitError(f"{where}: epoch record {i} has a non-number {key!r}")
    return records


def history_figure(history_or_path: Any) -> Figure:
    """The figure of :func:`plot_history` (not written to a file)."""
    records = read_history(history_or_path)
    epochs = [int(r["epoch"]) + 1 for r in records]
    fig, (loss_ax, acc_ax) = _new_figure(2, height=_SIZE[1] * 1.5, sharex=True)
    for ax, key, scale, label in ((loss_ax, "loss", 1.0, "loss"), (acc_ax, "acc", 100.0, "accuracy (%)")):
        for split, name, style in (("train", "train", "-"), ("eval", "test", "--")):
            pts = [(e, r.get(f"{split}_{key}")) for e, r in zip(epochs, records, strict=True)]
            pts = [(e, float(v) * scale) for e, v in pts if v is not None and math.isfinite(float(v))]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], linestyle=style,
                        marker="o" if len(pts) < 30 else None, markersize=3, linewidth=1.4, label=name,
                        gid=f"{split}_{key}")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    acc_ax.set_xlabel("epoch")
    acc_ax.xaxis.set_major_locator(_matplotlib().ticker.MaxNLocator(integer=True))
    last = records[-1]
    summary = f"{len(records)} epochs; final train acc {100 * float(last['train_acc']):.2f}%"
    if last.get("eval_acc") is not None:
        summary += f", test acc {100 * float(last['eval_acc']):.2f}%"
    loss_ax.set_title(summary, fontsize=10)
    return fig


def plot_history(history_or_path: Any, out: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Training curves: loss and accuracy (%) against epoch (1-based), train and test.

    Args:
        history_or_path: a :class:`~sparsekit.History` (what fit_weak/fit_strong/rewire return), its
            ``to_dicts()``, or the ``history.json`` the engine writes next to its checkpoint.
        out: the file, ``.png`` or ``.svg``.
    """
    return save_figure(history_figure(history_or_path), out, overwrite=overwrite)
