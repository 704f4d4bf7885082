"""The paper's experimental tables as resumable grids: ``sparsekit reproduce`` and :func:`run`.

>>> from sparsekit.reproduce import get_table, expand
>>> t = get_table(2)
>>> t.model, t.dataset, len(t.cells)
('vgg16', 'cifar10', 28)
>>> len(expand(t))  # x the paper's three runs
84

* :mod:`~sparsekit.reproduce.grids`: Tables 1-21 with the paper's row/column labels and recipes.
* :mod:`~sparsekit.reproduce.runner`: :func:`run` -- expand, skip finished jobs, resume interrupted
  ones, run in parallel, write ``results.csv`` / ``summary.md`` / ``plots/``.
* :mod:`~sparsekit.reproduce.summary`: the paper-shaped markdown table with Student-t CIs.
"""

from .grids import TABLES, GridCell, Recipe, Table, get_table, list_tables
from .runner import RESULT_COLUMNS, Job, RunResult, estimate_gpu_hours, expand, run, scale_table

__all__ = ["run", "expand", "get_table", "list_tables", "estimate_gpu_hours", "scale_table", "Table", "GridCell",
           "Recipe", "Job", "RunResult", "TABLES", "RESULT_COLUMNS"]
