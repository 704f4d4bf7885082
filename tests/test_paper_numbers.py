"""The paper's published numbers (sparsekit/reproduce/paper/*.csv): schema, packaging, and agreement with the paper.

The paper text is looked for in $SPARSEKIT_PAPERS, then in shared/papers next to or above the checkout; the
tests that read it skip by name when it is absent (the schema and packaging tests always run).
"""

from __future__ import annotations

import csv
import fnmatch
import os
import re
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sparsekit
from sparsekit.errors import SparsekitError
from sparsekit.reproduce import paper_numbers as pn
from sparsekit.reproduce.paper_numbers import list_paper_tables, paper_numbers, validate_paper_rows

ROOT = Path(__file__).resolve().parents[1]
PAPER_NAME = "erdos-renyi-lottery.txt"


def _paper_path() -> Path | None:
    candidates = [Path(os.environ["SPARSEKIT_PAPERS"])] if os.environ.get("SPARSEKIT_PAPERS") else []
    candidates += [p / "shared" / "papers" for p in (ROOT, *ROOT.parents)]
    for folder in candidates:
        if (folder / PAPER_NAME).is_file():
            return folder / PAPER_NAME
    return None


@pytest.fixture(scope="module")
def paper() -> str:
    path = _paper_path()
    if path is None:
        pytest.skip(f"paper text {PAPER_NAME} not found in $SPARSEKIT_PAPERS or shared/papers above {ROOT}: "
                    "the checks against the paper are skipped")
    return path.read_text(encoding="utf-8")


def table_block(paper: str, table: str) -> str:
    """The text of the paper between the caption before ``Table N:`` and that caption (tables precede captions)."""
    lines = paper.splitlines()
    caption = [i for i, line in enumerate(lines) if re.match(rf"Table {table}:", line)]
    assert len(caption) == 1, f"caption of Table {table} not found once"
    previous = [i for i, line in enumerate(lines[:caption[0]]) if re.match(r"Table \d+:", line)]
    return "\n".join(lines[(previous[-1] + 1 if previous else 0):caption[0]])


def _norm(text: str) -> str:
    return " ".join(text.split())


def cell_in_text(block: str, value: str, ci: str, ref: str) -> bool:
    """Whether a CSV cell is backed by the table's text: the quoted text of a garbled cell, else 'value ± ci'."""
    quote = re.search(r"\(text reads '(.*)'\)", ref)
    if quote:
        return quote.group(1) in _norm(block)
    pattern = re.escape(value) + (r" ?± ?" + re.escape(ci) if ci else r"(?! ?±)")
    return re.search(rf"(?<![\d.]){pattern}(?![\d.])", _norm(block)) is not None


def _csv_rows() -> dict[str, list[dict[str, str]]]:
    folder = resources.files("sparsekit.reproduce") / "paper"
    out = {}
    for t in list_paper_tables():
        with (folder / f"table{int(t):02d}.csv").open(encoding="utf-8", newline="") as f:
            out[t] = list(csv.DictReader(f))
    return out


# -- schema and packaging -------------------------------------------------------------------------


def test_tables_listed_are_the_papers_experimental_tables():
    assert list_paper_tables() == [str(t) for t in range(1, 22) if t != 12]
    with pytest.raises(SparsekitError, match="Table 12 .* only its caption"):
        paper_numbers("12")
    with pytest.raises(SparsekitError, match="no experimental table '22'.*tables: 1, 2"):
        paper_numbers("22")
    with pytest.raises(TypeError, match="table number"):
        paper_numbers(2.0)  # type: ignore[arg-type]
    assert paper_numbers(2) == paper_numbers("2") == paper_numbers("Table 2")


def test_every_row_has_the_schema_and_names_sparsekit_knows():
    methods, models = set(sparsekit.list_methods()), set(sparsekit.models.list_models())
    total = 0
    for t in list_paper_tables():
        rows = paper_numbers(t)
        assert rows, t
        total += len(rows)
        validate_paper_rows(rows, table=t)
        for r in rows:
            assert r["table"] == t and r["model"] in models
            assert r["method"] in methods or r["method"] in ("imp", "rigl", "edge-popup", "dense")
            assert r["init"] == "" or r["init"] == "dense" or r["init"] in methods
            assert 0 < r["density"] <= 1 and isinstance(r["value"], float)
            assert r["source_density"] is None or r["density"] < r["source_density"] <= 1
            if r["metric"] == "test_acc":
                assert 0 <= r["value"] <= 100
            else:
                assert r["metric"] == "repairs" and t in ("5", "6")
    assert total == 336


def test_sparsity_is_converted_to_density_exactly():
    t2 = {(r["method"], r["density"]): r["value"] for r in paper_numbers("2")}
    assert t2[("er-balanced", 0.005)] == 85.9  # sparsity 0.995 -> density 0.005, no float noise
    assert t2[("er-balanced", 0.001)] == 68.7
    assert sorted({r["density"] for r in paper_numbers("2")}) == [0.001, 0.005, 0.01, 0.1]
    t1 = {(r["source_density"], r["density"]): r for r in paper_numbers("1")}
    assert t1[(1.0, 0.1)]["init"] == "dense" and t1[(1.0, 0.1)]["value"] == 87.9  # 0 -> 0.9: dense start
    assert t1[(0.2, 0.05)]["init"] == "er-uniform" and t1[(0.2, 0.05)]["ci"] == 0.1  # 0.8 -> 0.95
    t21 = {(r["init"], r["source_density"]): r["value"] for r in paper_numbers("21")}
    assert t21[("er-pyramidal", 0.05)] == 92.58  # 0.95 -> 0.99
    assert all(r["density"] == 0.01 for r in paper_numbers("21"))


@given(st.integers(min_value=0, max_value=9999), st.integers(min_value=1, max_value=4))
def test_density_conversion_property(digits, places):
    text = f"0.{digits:0{places}d}" if digits < 10**places else "0.5"
    d = pn._density(text, "sparsity", "test")
    assert d == float(Decimal(1) - Decimal(text))
    assert repr(d) == repr(float(str(Decimal(1) - Decimal(text))))  # the shortest repr: no 0.0050000000000000044


def test_returned_rows_are_copies():
    rows = paper_numbers("3")
    rows[0]["value"] = -1.0
    rows.clear()
    assert paper_numbers("3")[0]["value"] == 73.6


def test_package_data_is_declared_for_every_paper_file():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sparsekit"]
    folder = ROOT / "sparsekit" / "reproduce" / "paper"
    files = sorted(p.relative_to(ROOT / "sparsekit").as_posix() for p in folder.iterdir())
    assert len(files) == len(list_paper_tables()) + 1  # one CSV per table and the README
    for f in files:
        assert any(fnmatch.fnmatch(f, pattern) for pattern in data), f"{f} would not be installed by pip install ."
    assert (resources.files("sparsekit.reproduce") / "paper" / "table02.csv").is_file()


def _good_row(**change):
    row = {"table": "2", "model": "vgg16", "dataset": "cifar10", "method": "er-balanced", "init": "", "density": 0.01,
           "source_density": None, "metric": "test_acc", "value": 89.3, "ci": None,
           "ref": "Table 2, row sparsity 0.99, column Balanced"}
    return {**row, **change}


@pytest.mark.parametrize("change, message", [
    ({"value": 100.5}, "test_acc 100.5 outside"),
    ({"value": -0.1}, "outside"),
    ({"metric": "repairs", "value": -1.0}, "repairs -1.0 outside"),
    ({"density": 0.0}, "density 0.0 outside"),
    ({"density": 1.5}, "density 1.5 outside"),
    ({"source_density": 0.005}, "source density 0.005 outside"),
    ({"model": "vgg11"}, "model 'vgg11'"),
    ({"method": "balanced"}, "method 'balanced'"),
    ({"dataset": "imagenet"}, "dataset 'imagenet'"),
    ({"metric": "acc"}, "metric 'acc'"),
    ({"value": "89.3"}, "not a finite float"),
    ({"value": float("nan")}, "not a finite float"),
    ({"table": "3"}, "table '3' should be 2"),
    ({"ref": "Table 3, row x"}, "ref must start with 'Table 2,'"),
    ({"method": "rigl"}, "needs the init"),
    ({"init": "er-erk"}, "only for rigl and edge-popup"),
])
def test_validation_rejects_bad_rows(change, message):
    validate_paper_rows([_good_row()], table="2")
    with pytest.raises(SparsekitError, match=re.escape(message)):
        validate_paper_rows([_good_row(**change)], table="2")


def test_validation_rejects_duplicate_cells_and_bad_csv():
    with pytest.raises(SparsekitError, match="the same cell as"):
        validate_paper_rows([_good_row(), _good_row(value=89.0)], table="2")
    head = ",".join(pn.PAPER_CSV_COLUMNS)
    with pytest.raises(SparsekitError, match="sparsity '0.99x' is not a number"):
        pn._parse(f"{head}\n2,vgg16,cifar10,er-erk,,0.99x,,test_acc,87.8,,\"Table 2, r\"\n", "2", "t.csv")
    with pytest.raises(SparsekitError, match="sparsity '1.0' outside"):
        pn._parse(f"{head}\n2,vgg16,cifar10,er-erk,,1.0,,test_acc,87.8,,\"Table 2, r\"\n", "2", "t.csv")
    with pytest.raises(SparsekitError, match="columns"):
        pn._parse("table,model\n2,vgg16\n", "2", "t.csv")
    with pytest.raises(SparsekitError, match="expected 11 fields"):
        pn._parse(f"{head}\n2,vgg16,cifar10\n", "2", "t.csv")


# -- agreement with the paper text ---------------------------------------------------------------


def test_every_cell_is_in_its_tables_text(paper):
    checked = 0
    for t, rows in _csv_rows().items():
        block = table_block(paper, t)
        for r in rows:
            assert cell_in_text(block, r["value"], r["ci"], r["ref"]), f"{r['ref']}: {r['value']} ± {r['ci']} not found"
            checked += 1
    assert checked == 336


def test_cell_check_fails_on_a_wrong_cell(paper):
    block = table_block(paper, "7")
    assert cell_in_text(block, "93.96", "0.19", "Table 7, row sparsity 0.9, column ERK")
    assert not cell_in_text(block, "93.97", "0.19", "Table 7, ...")
    assert not cell_in_text(block, "93.96", "0.2", "Table 7, ...")
    assert not cell_in_text(block, "3.96", "0.19", "Table 7, ...")  # no match inside a longer number
    assert not cell_in_text(table_block(paper, "2"), "89.04", "0.21", "Table 2, ...")  # Table 7's cell, wrong table
    assert not cell_in_text(block, "90.83", "0.3", "Table 7, ... (text reads '90.8 4 ± 0.3')")
    assert table_block(paper, "12").strip() == ""  # the paper text has no numbers for Table 12


# (table, method, init, sparsity, source sparsity or "", regex for the row in the table's text: value [, ci])
SPOT = [
    ("2", "er-balanced", "", "0.99", "", r"^0\.99\t[\d.]+\t([\d.]+)\t"),
    ("2", "er-from", "", "0.999", "", r"^0\.999\t(?:[\d.]+\t){6}([\d.]+)$"),
    ("3", "er-snip", "", "0.99", "", r"^0\.99\t(?:[\d.]+\t){4}([\d.]+)\t"),
    ("3", "er-pyramidal", "", "0.5", "", r"^0\.5\t([\d.]+)\t"),
    ("4", "rigl", "er-balanced", "0.995", "", r"^Balanced\t(?:[\d.]+\t){3}([\d.]+)\t"),
    ("4", "er-erk", "", "0.999", "", r"^ERK\t(?:[\d.]+\t){4}([\d.]+)\t"),
    ("5", "er-snip", "", "0.9", "", r"^ER Snip\t(?:[\d.]+\t){2}([\d.]+)\t"),
    ("5", "er-uniform", "", "0.999", "", r"^Uniform\t(?:[\d.]+\t){4}([\d.]+)"),
    ("6", "er-erk", "", "0.999", "", r"^ERK\t(?:[\d.]+\t){4}([\d.]+)"),
    ("6", "er-pyramidal", "", "0.99", "", r"^Pyramidal \(ours\)\t(?:[\d.]+\t){3}([\d.]+)\t"),
    ("7", "er-erk", "", "0.9", "", r"^0\.9\t.*\t([\d.]+) ± ([\d.]+)$"),
    ("7", "er-snip", "", "0.9", "", r"^\t0\.9\t([\d.]+) ±\t([\d.]+)\t"),
    ("8", "er-balanced", "", "0.99", "", r"^0\.99\t[^\t]+\t([\d.]+) ± ([\d.]+)\t"),
    ("8", "er-snip", "", "0.5", "", r"^0\.5\t(?:[^\t]+\t){4}([\d.]+) ± ([\d.]+)$"),
    ("9", "er-erk", "", "0.999", "", r"^0\.999\t.*\t([\d.]+)\t± ([\d.]+)$"),
    ("9", "er-synflow", "", "0.995", "", r"^\t0\.995\t10 ±\t= 0\t([\d.]+) ∃\t([\d.]+)"),
    ("10", "er-uniform", "", "0.5", "", r"^0\.5\t(?:[^\t]*\t){4}([\d.]+)\t± ([\d.]+)\t"),
    ("10", "er-erk", "", "0.99", "", r"^0\.99\t.*\t([\d.]+) ± ([\d.]+)$"),
    ("16", "er-pyramidal", "", "0.95", "", r"^Pyramidal \(ours\)\t(?:[^\t]+\t){3}([\d.]+) ± ([\d.]+)$"),
    ("16", "er-uniform", "", "0.5", "", r"^Uniform\t([\d.]+) ± ([\d.]+)\t"),
    ("17", "imp", "", "0.5", "", r"^Test Acc\.\t([\d.]+)\t"),
    ("17", "imp", "", "0.9", "", r"^Test Acc\.\t[\d.]+\t([\d.]+)"),
    ("18", "er-snip", "", "0.99", "", r"^ER Snip\t(?:[^\t]+\t){3}([\d.]+)$"),
    ("18", "er-balanced", "", "0.5", "", r"^Balanced \(ours\)\t([\d.]+) ± ([\d.]+)\t"),
    ("19", "er-erk", "", "0.99", "", r"^ERK\t(?:[^\t]+\t){3}([\d.]+) ± ([\d.]+)$"),
    ("19", "er-pyramidal", "", "0.9", "", r"^Pyramidal \(ours\)\t(?:[^\t]+\t){2}([\d.]+) ± ([\d.]+)\t"),
    ("20", "er-balanced", "", "0.99", "", r"^ERK Balanced Pyramidal\t[\d.]+ ± [\d.]+ ([\d.]+) ± ([\d.]+) "),
    ("20", "rigl", "er-pyramidal", "0.999", "",
     r"^\tERK Balanced Pyramidal\t(?:[\d.]+ ± [\d.]+ ?){3}\t(?:[\d.]+ ± [\d.]+ ){2}([\d.]+) ± ([\d.]+)\t?$"),
    ("21", "rigl", "er-erk", "0.99", "0.95", r"^ERK\t(?:[^\t]+\t){2}([\d.]+) ± ([\d.]+)"),
    ("21", "rigl", "er-balanced", "0.99", "0.5", r"^Balanced \(ours\)\t([\d.]+) ± ([\d.]+)"),
]

# the header rows that fix which column is which method, for the tables whose cells SPOT finds by position
HEADERS = {
    "2": r"^Sparsity\tPyramidal\tBalanced\tUniform\tERK\tSnip \(ER\)\tSynflow \(ER\)\tIMP \(ER\)$",
    "3": r"^Sparsity\tPyramidal\tBalanced\tUniform\tERK\tSnip \(ER\)\tSynflow \(ER\)\tIMP \(ER\)$",
    "4": r"^ER Method\tOriginal\tRewired\tOriginal\tRewired\tOriginal\tRewired$",
    "5": r"^[^\t]*\t0\.5\t0\.8\t0\.9\t0\.99\t0\.999",
    "6": r"^[^\t]*\t0\.5\t0\.8\t0\.9\t0\.99\t0\.999",
    "8": r"^Sparsity\tPyramidal\tBalanced\tUniform\tERK\tSnip \(ER\)$",
    "16": r"^\t0\.5\t0\.8\t0\.9\t0\.95$",
    "17": r"^\t0\.5\t0\.9\t$",
    "18": r"^[^\t]*\t0\.5\t0\.8\t0\.9\t0\.99$",
    "19": r"^[^\t]*\t0\.5\t0\.8\t0\.9\t0\.99$",
    "21": r"^\t\$0\.5 \\rightarrow 0\.99\$\t\$0\.9 \\rightarrow 0\.99\$\t\$0\.95 \\rightarrow 0\.99\$",
}


def _find(rows, method, init, sparsity, source):
    density = float(Decimal(1) - Decimal(sparsity))
    src = float(Decimal(1) - Decimal(source)) if source else None
    key = (method, init, density, src)
    hits = [r for r in rows if (r["method"], r["init"], r["density"], r["source_density"]) == key]
    assert len(hits) == 1, (method, init, sparsity, source, len(hits))
    return hits[0]


def test_spot_checks_against_the_paper(paper):
    assert {s[0] for s in SPOT} | {"1", "11", "13", "14", "15"} == set(list_paper_tables())
    for t, pattern in HEADERS.items():
        assert re.search(pattern, table_block(paper, t), re.M), f"Table {t}: header {pattern!r} not found"
    for t, method, init, sparsity, source, pattern in SPOT:
        match = re.search(pattern, table_block(paper, t), re.M)
        assert match, f"Table {t}: {pattern!r} not found"
        row = _find(paper_numbers(t), method, init, sparsity, source)
        assert row["value"] == float(match.group(1)), row["ref"]
        if match.re.groups > 1:
            assert row["ci"] == float(match.group(2)), row["ref"]


@pytest.mark.parametrize("table, cells", [("1", 6), ("11", 6), ("13", 4), ("14", 4), ("15", 2)])
def test_strong_ticket_tables_match_the_paper(paper, table, cells):
    """Edge-popup tables: the 'initial -> final' headers and the 'Test Acc.' cells, in order (Table 15's third
    header is cut off in the text, so its value has no column and is left out)."""
    block = table_block(paper, table)
    heads = re.findall(r"\$+ ?(0(?:\.\d+)?) \\(?:to|rightarrow) (0\.\d+) ?\$+", block)
    values = re.findall(r"(\d+\.\d+) ± (\d+\.\d+)", block)
    rows = paper_numbers(table)
    assert len(heads) == len(rows) == cells and len(values) >= cells
    for (src, final), (value, ci) in zip(heads, values, strict=False):
        row = _find(rows, "edge-popup", "dense" if src == "0" else "er-uniform", final, src)
        assert (row["value"], row["ci"]) == (float(value), float(ci)), row["ref"]


# Spot checks typed independently from the paper (erdos-renyi-lottery.txt), so they run where the paper
# text is not available (the checks above then skip by name): (table, method, density, value).
_INDEPENDENT_SPOT_CHECKS = [
    ("3", "er-pyramidal", 0.5, 73.6),   # Table 3 (VGG19, CIFAR100), sparsity 0.5, Pyramidal
    ("3", "er-balanced", 0.01, 65.3),   # sparsity 0.99, Balanced
    ("3", "er-uniform", 0.1, 69.1),     # sparsity 0.9, Uniform
    ("3", "er-synflow", 0.01, 62.6),    # sparsity 0.99, Synflow (ER)
    ("3", "er-erk", 0.2, 72.8),         # sparsity 0.8, ERK
    ("2", "er-balanced", 0.01, 89.3),   # Table 2 (VGG16, CIFAR10), sparsity 0.99, Balanced
    ("2", "er-pyramidal", 0.1, 92.9),   # sparsity 0.9, Pyramidal
]


@pytest.mark.parametrize(("table", "method", "density", "value"), _INDEPENDENT_SPOT_CHECKS)
def test_independent_spot_checks(table, method, density, value):
    rows = [r for r in paper_numbers(table)
            if r["method"] == method and r["density"] == pytest.approx(density) and not r.get("init")]
    assert [r["value"] for r in rows] == [pytest.approx(value)], rows
