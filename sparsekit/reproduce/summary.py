"""``summary.md``: a reproduced table laid out like the paper's, ours next to the paper's numbers.

Each entry reads ``ours ± CI (paper P ± C, diff D) n=k``: the mean over seeds, the half-width of the
two-sided 95% Student-t confidence interval over seeds (as the paper reports, §3: "averages and
standard 0.95-confidence intervals"), the paper's number and its interval, ours minus the paper's,
and the number of finished seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._stats import mean_ci, t_quantile_975
from .grids import Table

__all__ = ["t_quantile_975", "mean_ci", "render_summary", "format_entry"]

def _num(x: float, metric: str) -> str:
    return f"{x:.2f}" if metric == "test_acc" else f"{x:.2f}".rstrip("0").rstrip(".")


def format_entry(values: Sequence[float], paper: Mapping[str, Any] | None, metric: str, *, paper_known: bool,
                 pending: int = 0, failed: int = 0, stale: int = 0) -> str:
    """One table entry: ``ours ± CI (paper P ± C, diff D) n=k`` (plus pending/failed counts)."""
    parts = []
    if values:
        m, ci, n = mean_ci(values)
        ours = _num(m, metric) + (f" ± {_num(ci, metric)}" if ci is not None else "")
        if paper is not None:
            p = float(paper["value"])
            pci = paper.get("ci")
            ptxt = _num(p, metric) + (f" ± {_num(float(pci), metric)}" if pci not in (None, "") else "")
            parts.append(f"{ours} (paper {ptxt}, diff {m - p:+.2f}) n={n}")
        else:
            parts.append(f"{ours} (paper {'–' if paper_known else 'n/a'}) n={n}")
    else:
        parts.append("–")
    if pending:
        parts.append(f"{pending} pending")
    if failed:
        parts.append(f"{failed} FAILED")
    if stale:
        parts.append(f"{stale} with other settings")
    return "; ".join(parts)


def render_summary(table: Table, rows: Sequence[Mapping[str, Any]], *, paper_rows: Mapping[str, Mapping[str, Any]],
                   paper_available: bool, scale: str, header_notes: Sequence[str] = ()) -> str:
    """The markdown summary of one reproduced table.

    Args:
        table: the (possibly scaled) table whose grid is laid out.
        rows: results.csv rows (dicts) of this run.
        paper_rows: cell id -> the matched paper row (keys ``value``, ``ci``, ``ref``).
        paper_available: whether the package has the paper's numbers at all.
        scale: ``"full"`` or ``"tiny"``.
        header_notes: extra lines for the header (data, recipe, warnings).
    """
    by_key: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["model"], r["_row"], r["_col"]), []).append(r)
    models = list(dict.fromkeys(r["model"] for r in rows)) or [table.model]
    unit = "test accuracy (%)" if table.metric == "test_acc" else "flow repairs ((layer, direction) pairs)"
    out = [f"# Table {table.number}: {table.title}", ""]
    out.append(f"- metric: {unit}; each entry: ours ± 95% Student-t CI over seeds "
               "(paper's number ± its CI, diff = ours - paper) n = finished seeds")
    out.append(f"- scale: **{scale}**" + (
        " -- tiny models, digits/synthetic data and a few epochs: the numbers check the pipeline, they are "
        "not comparable with the paper's" if scale == "tiny" else ""))
    if not paper_available:
        out.append("- paper: n/a -- this sparsekit has no paper numbers (sparsekit.reproduce.paper_numbers "
                   "is missing), so no entry is compared with the paper")
    for line in header_notes:
        out.append(f"- {line}")
    if table.notes:
        out.append(f"- note on the paper's table: {table.notes}")
    out.append("")
    for model in models:
        if len(models) > 1:
            out += [f"## {model}", ""]
        head = [table.row_header or " "] + list(table.cols)
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for row in table.rows:
            entries = []
            for col in table.cols:
                try:
                    cell = table.cell(row, col)
                except KeyError:
                    entries.append("not in this run")
                    continue
                rs = by_key.get((model, row, col), [])
                if not rs:
                    entries.append("not run")
                    continue
                done = [float(r["value"]) for r in rs if r["status"] == "done"]
                pending = sum(r["status"] in ("pending", "running") for r in rs)
                failed = sum(r["status"] == "failed" for r in rs)
                stale = sum(r["status"] == "stale" for r in rs)
                paper = paper_rows.get(f"{model}-{cell.cell_id}")
                entries.append(format_entry(done, paper, table.metric, paper_known=paper_available,
                                            pending=pending, failed=failed, stale=stale))
            out.append("| " + " | ".join([row] + entries) + " |")
        out.append("")
    bad = [r for r in rows if r["status"] == "failed"]
    if bad:
        out += ["## Failed cells", ""]
        out += [f"- {r['cell']} seed {r['seed']}: {r.get('error', '')}" for r in bad]
        out.append("")
    return "\n".join(out)
