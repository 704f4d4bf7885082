"""The paper's published numbers as data: one CSV per experimental table, typed in from the paper text.

``paper_numbers("2")`` returns the cells of Table 2 (VGG16 on CIFAR-10, paper §3) as dicts; every
output of ``sparsekit reproduce`` puts these next to its own results. The CSV files live in
``sparsekit/reproduce/paper/`` (package data, installed with the package); their ``README.md``
lists the cells of the paper that are missing or unreadable in its text and were left out.

A row (a dict) has the keys:

* ``table``: the paper's table number as a string, ``"1"`` .. ``"21"``.
* ``model``: a :mod:`sparsekit.models` name (``vgg16``, ``vgg19``, ``resnet18``, ``resnet20``,
  ``resnet50``, ``resnet110``); ``dataset``: ``cifar10``, ``cifar100`` or ``tiny-imagenet``.
* ``method``: what was run, in sparsekit's names: a registered ER scheme (``er-uniform``, ``er-erk``,
  ``er-balanced``, ``er-pyramidal``, ``er-snip``, ``er-synflow``, and ``er-from`` for the paper's
  "IMP (ER)", an ER mask with the layerwise densities of an IMP ticket), or ``imp``, ``rigl``,
  ``edge-popup``, ``dense``.
* ``init``: the mask a run starts from when ``method`` is a training algorithm: ``rigl`` rows (the
  "Rewired" columns of Tables 4 and 20, the sparse-to-sparse runs of Table 21) start from the ER
  scheme named here; ``edge-popup`` rows start from ``er-uniform`` or ``dense``. Empty (``""``) when
  ``method`` is itself the ER scheme that is trained (the "Original" columns).
* ``density``: the final density. The paper prints *sparsity* = 1 - density; the CSVs keep the
  sparsity as printed and the conversion is exact (decimal arithmetic: sparsity 0.995 -> 0.005).
* ``source_density``: the density a run starts from when it differs from the final one (edge-popup's
  annealing "0.5 -> 0.9" and Table 21's "initial -> final"; 1.0 for a dense start), else None.
* ``metric``: ``"test_acc"`` (percent, as printed) or ``"repairs"`` (Tables 5-6: average number of
  mask edges added by flow repair over three runs).
* ``value``: the number as printed; ``ci``: the ± printed with it (a 0.95 confidence interval in most
  tables; a standard deviation in Table 16, as its caption says), else None.
* ``ref``: where the number is in the paper, e.g. ``"Table 2, row sparsity 0.99, column Balanced"``;
  cells read from garbled text quote the text (``"(text reads '90.8 3 ± 0.3')"``).
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import math
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

from ..errors import SparsekitError

__all__ = ["paper_numbers", "list_paper_tables", "validate_paper_rows", "PAPER_CSV_COLUMNS", "MISSING_TABLES"]

#: Columns of the CSV files, in order (``sparsity`` and ``source_sparsity`` as printed in the paper).
PAPER_CSV_COLUMNS = ("table", "model", "dataset", "method", "init", "sparsity", "source_sparsity", "metric", "value",
                     "ci", "ref")

#: Tables of the paper whose numbers are not in its text; ``paper_numbers`` says so by name.
MISSING_TABLES = {"12": "Table 12 (edge-popup from a dense ResNet18 on CIFAR-10) has only its caption in the paper "
                        "text, no numbers; use Table 14 (the same baseline for VGG16) or Table 1's dense column "
                        "(sparsity 0 -> 0.9)"}

MODELS = ("vgg16", "vgg19", "resnet18", "resnet20", "resnet50", "resnet110")
DATASETS = ("cifar10", "cifar100", "tiny-imagenet")
ER_METHODS = ("er-uniform", "er-erk", "er-balanced", "er-pyramidal", "er-snip", "er-synflow", "er-from")
METHODS = (*ER_METHODS, "imp", "rigl", "edge-popup", "dense")
INITS = ("", "dense", *ER_METHODS)
METRICS = {"test_acc": (0.0, 100.0), "repairs": (0.0, math.inf)}


def _files() -> dict[str, Any]:
    folder = resources.files("sparsekit.reproduce") / "paper"
    out = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith("table") and name.endswith(".csv") and name[5:-4].isdigit():
            out[str(int(name[5:-4]))] = entry
    return out


def list_paper_tables() -> list[str]:
    """The paper's tables with numbers in the package, as strings in numeric order (``["1", "2", ...]``)."""
    return sorted(_files(), key=int)


def _decimal(text: str, what: str, where: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise SparsekitError(f"{where}: {what} {text!r} is not a number") from None
    if not d.is_finite():
        raise SparsekitError(f"{where}: {what} {text!r} is not a finite number")
    return d


def _density(sparsity: str, what: str, where: str) -> float:
    s = _decimal(sparsity, what, where)
    if not 0 <= s < 1:
        raise SparsekitError(f"{where}: {what} {sparsity!r} outside [0, 1); the CSVs hold sparsity = 1 - density")
    return float(Decimal(1) - s)


def _parse(text: str, table: str, source: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != PAPER_CSV_COLUMNS:
        raise SparsekitError(f"{source}: columns {reader.fieldnames} differ from {list(PAPER_CSV_COLUMNS)}")
    rows = []
    for i, raw in enumerate(reader, start=2):
        where = f"{source} line {i}"
        if None in raw or any(v is None for v in raw.values()):
            raise SparsekitError(f"{where}: expected {len(PAPER_CSV_COLUMNS)} fields")
        rows.append({
            "table": raw["table"], "model": raw["model"], "dataset": raw["dataset"], "method": raw["method"],
            "init": raw["init"],
            "density": _density(raw["sparsity"], "sparsity", where),
            "source_density": _density(raw["source_sparsity"], "source sparsity", where) if raw["source_sparsity"]
            else None,
            "metric": raw["metric"],
            "value": float(_decimal(raw["value"], "value", where)),
            "ci": float(_decimal(raw["ci"], "ci", where)) if raw["ci"] else None,
            "ref": raw["ref"],
        })
    validate_paper_rows(rows, table=table, source=source)
    return rows


def validate_paper_rows(rows: list[dict[str, Any]], *, table: str | None = None, source: str = "paper rows") -> None:
    """Check rows against the schema in the module docstring; raise :class:`SparsekitError` naming the first problem.

    Checks types, names (model, dataset, method, init, metric), ranges (accuracy in [0, 100], repairs >= 0,
    densities in (0, 1], a source density at least the final one), that the ``ref`` names the row's table,
    and that no two rows describe the same cell.
    """
    seen: dict[tuple[Any, ...], str] = {}
    for n, r in enumerate(rows):
        where = f"{source} row {n + 1} ({r.get('ref', '?')})"
        missing = {"table", "model", "dataset", "method", "init", "density", "source_density", "metric", "value", "ci",
                   "ref"} - set(r)
        if missing:
            raise SparsekitError(f"{where}: missing keys {sorted(missing)}")
        t = r["table"]
        if not isinstance(t, str) or not t.isdigit() or not 1 <= int(t) <= 21 or (table is not None and t != table):
            raise SparsekitError(f"{where}: table {t!r} should be {table or 'a string 1..21'}")
        for key, allowed in (("model", MODELS), ("dataset", DATASETS), ("method", METHODS), ("init", INITS),
                             ("metric", tuple(METRICS))):
            if r[key] not in allowed:
                raise SparsekitError(f"{where}: {key} {r[key]!r} is not one of {', '.join(map(repr, allowed))}")
        for key in ("density", "source_density", "value", "ci"):
            v = r[key]
            if v is None and key in ("source_density", "ci"):
                continue
            if not isinstance(v, float) or not math.isfinite(v):
                raise SparsekitError(f"{where}: {key} {v!r} is not a finite float")
        if not 0 < r["density"] <= 1:
            raise SparsekitError(f"{where}: density {r['density']!r} outside (0, 1]")
        if r["source_density"] is not None and not r["density"] <= r["source_density"] <= 1:
            raise SparsekitError(f"{where}: source density {r['source_density']!r} outside [density, 1]")
        lo, hi = METRICS[r["metric"]]
        if not lo <= r["value"] <= hi:
            raise SparsekitError(f"{where}: {r['metric']} {r['value']!r} outside [{lo}, {hi}]")
        if r["ci"] is not None and not 0 <= r["ci"] <= hi:
            raise SparsekitError(f"{where}: ci {r['ci']!r} outside [0, {hi}]")
        if r["method"] in ("rigl", "edge-popup") and not r["init"]:
            raise SparsekitError(f"{where}: a {r['method']} row needs the init it starts from")
        if r["method"] not in ("rigl", "edge-popup") and r["init"]:
            raise SparsekitError(f"{where}: init {r['init']!r} is only for rigl and edge-popup rows")
        if not isinstance(r["ref"], str) or not r["ref"].startswith(f"Table {t},"):
            raise SparsekitError(f"{where}: ref must start with 'Table {t},'")
        key = (t, r["model"], r["dataset"], r["method"], r["init"], r["density"], r["source_density"], r["metric"])
        if key in seen:
            raise SparsekitError(f"{where}: the same cell as {seen[key]}")
        seen[key] = r["ref"]


@functools.cache
def _load(table: str) -> tuple[dict[str, Any], ...]:
    entry = _files()[table]
    return tuple(_parse(entry.read_text(encoding="utf-8"), table, f"sparsekit/reproduce/paper/{entry.name}"))


def paper_numbers(table: str | int) -> list[dict[str, Any]]:
    """The published cells of one of the paper's tables (module docstring: the keys of a row).

    Args:
        table: the table number, ``"2"`` or ``2`` (Tables 1-11 and 13-21; Table 12 has no numbers in the text).

    Returns:
        A new list of new dicts (changing them does not change later calls), in the order of the paper's table.

    Raises:
        SparsekitError: ``table`` is not one of :func:`list_paper_tables`.
    """
    if isinstance(table, bool) or not isinstance(table, (str, int)):
        raise TypeError(f"table must be a table number such as '2', got {type(table).__name__}")
    key = str(table).strip()
    if key.lower().startswith("table"):
        key = key[5:].strip()
    key = str(int(key)) if key.isdigit() else key
    if key in MISSING_TABLES:
        raise SparsekitError(MISSING_TABLES[key])
    tables = list_paper_tables()
    if key not in tables:
        raise SparsekitError(f"the paper has no experimental table {table!r} with numbers; tables: {', '.join(tables)}")
    return [dict(r) for r in copy.deepcopy(_load(key))]
