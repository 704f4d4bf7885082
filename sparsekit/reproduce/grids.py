"""The paper's experimental tables as data: one :class:`Table` per table, each a grid of :class:`GridCell`.

Every table of ``papers/erdos-renyi-lottery.txt`` that reports an experiment is here: Tables 1-4 of
the main text and Tables 7-21 of the appendix (accuracies, ``metric="test_acc"`` in percent) and the
flow-repair counts of Tables 5-6 (``metric="repairs"``). A table keeps the paper's own row and
column labels (``Table.rows``, ``Table.cols``, in the paper's order and orientation) and maps every
(row, column) entry to what produces it: a model, a sparsekit method, a final density, the initial
(source) density where the paper anneals or prunes from one, and the trainer with its recipe:

* ``"weak"``: :func:`sparsekit.fit_weak` on an ER mask (App. A.7: SGD lr 0.1, momentum 0.9, weight
  decay 5e-4, batch 128, 160 epochs, lr x0.1 at epochs 80 and 120; standard crop+flip augmentation).
  ``er-imp`` first runs IMP for the layerwise densities that ``er-from`` randomises (App. A.7: 25 levels).
* ``"strong"``: :func:`sparsekit.fit_strong`, edge-popup annealed over 5 levels of 100 epochs from an
  ``er-uniform`` source (App. A.7, A.9; Signed Kaiming Constant weights, edge-popup appendix).
* ``"rewire"``: :func:`sparsekit.rewire` with RigL, masks updated every 100 iterations, drop fraction
  0.5 (§3, App. A.13); with a source density it prunes while rewiring (Table 21).
* ``"imp"``: :func:`sparsekit.imp` (25 levels) and the final training of App. A.7 (Adam lr 1e-3,
  batch 256, 160 epochs) -- Table 17.
* ``"flow"``: no training; the number of (layer, direction) pairs flow repair corrected (App. A.1).

Densities are ``1 - sparsity`` of the paper's labels. Where the paper text is incomplete the table
says so in ``Table.notes`` (Table 12's body and a label of Table 15 are missing from the text).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import SparsekitError

__all__ = ["Recipe", "GridCell", "Table", "TABLES", "get_table", "list_tables", "TRAINERS", "METHOD_LABELS"]

TRAINERS = ("weak", "strong", "rewire", "imp", "flow")

#: The paper's row/column names of the layerwise schemes -> sparsekit method names.
METHOD_LABELS: dict[str, str] = {
    "Pyramidal": "er-pyramidal", "Pyramidal (ours)": "er-pyramidal",
    "Balanced": "er-balanced", "Balanced (ours)": "er-balanced",
    "Uniform": "er-uniform", "ERK": "er-erk",
    "Snip (ER)": "er-snip", "ER Snip": "er-snip",
    "Synflow (ER)": "er-synflow", "IMP (ER)": "er-imp",
}


@dataclass(frozen=True)
class Recipe:
    """How one cell is trained (paper App. A.7 unless noted). Fields a trainer does not use are ignored.

    Attributes:
        trainer: one of :data:`TRAINERS`.
        epochs: training epochs (weak, rewire; the final training of ``imp``).
        lr, momentum, weight_decay, batch_size: optimizer settings.
        optimizer: ``"sgd"`` or ``"adam"`` (the IMP baseline's final training, App. A.7).
        schedule: ``"multistep"`` (x0.1 at 50% and 75%: epochs 80 and 120 of 160) or ``"cosine"``.
        augmentation: ``"standard"`` (random crop with 4-pixel padding + horizontal flip, the loaders'
            default for CIFAR/Tiny-ImageNet) or ``"none"``.
        levels, epochs_per_level, source_method: edge-popup annealing (App. A.7: 5 levels x 100 epochs,
            uniform ER source, paper Table 1).
        update_every, drop_fraction: RigL (App. A.7: every 100 iterations, prune rate 0.5).
        imp_rounds, imp_epochs_per_round: IMP's pruning levels for ``er-imp`` and Table 17 (App. A.7:
            25 levels; its "30 epoch warm up" is read as 30 epochs of training per level).
        flow: flow preservation of every ER mask (App. A.1: random addition).
    """

    trainer: str
    epochs: int = 160
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    optimizer: str = "sgd"
    schedule: str = "multistep"
    augmentation: str = "standard"
    levels: int = 5
    epochs_per_level: int = 100
    source_method: str = "er-uniform"
    update_every: int = 100
    drop_fraction: float = 0.5
    imp_rounds: int = 25
    imp_epochs_per_round: int = 30
    flow: str = "repair"

    def __post_init__(self) -> None:
        if self.trainer not in TRAINERS:
            raise ValueError(f"trainer must be one of {TRAINERS}, got {self.trainer!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The settings this recipe's trainer uses, as ``key=value`` text (for summaries)."""
        keys = _RECIPE_FIELDS[self.trainer]
        return ", ".join(f"{k}={getattr(self, k)}" for k in keys)

    def train_epochs(self) -> int:
        """Epochs of training one cell costs (for the GPU-hour estimate)."""
        if self.trainer == "flow":
            return 0
        if self.trainer == "strong":
            return self.levels * self.epochs_per_level
        return self.epochs


_OPT = ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "schedule")
_RECIPE_FIELDS: dict[str, tuple[str, ...]] = {
    "weak": ("epochs", *_OPT, "flow"),
    "strong": ("levels", "epochs_per_level", "source_method", *_OPT, "flow"),
    "rewire": ("epochs", *_OPT, "update_every", "drop_fraction", "flow"),
    "imp": ("imp_rounds", "imp_epochs_per_round", "epochs", *_OPT),
    "flow": ("flow",),
}

WEAK = Recipe("weak")
STRONG = Recipe("strong", schedule="cosine", epochs=500)
REWIRE = Recipe("rewire")
IMP_BASELINE = Recipe("imp", optimizer="adam", lr=1e-3, batch_size=256)
FLOW = Recipe("flow", epochs=0)


@dataclass(frozen=True)
class GridCell:
    """One entry of a paper table: its labels and what produces it.

    Attributes:
        row, col: the paper's row and column label of this entry.
        method: sparsekit method (``er-balanced``, ..., ``er-imp``; ``edge-popup`` for strong tickets,
            ``rigl`` for rewired ones (started from ``init``), ``imp`` for the IMP baseline; the names of
            the paper-number rows of :mod:`sparsekit.reproduce.paper_numbers`).
        density: final global density (``1 - sparsity``).
        source_density: initial density for annealed / sparse-to-sparse cells, else None.
        trainer: which trainer produces it (:data:`TRAINERS`).
        er_method: the ER scheme of the initial mask (rewire and strong cells; the method itself for weak).
    """

    row: str
    col: str
    method: str
    density: float
    source_density: float | None
    trainer: str
    er_method: str | None = None

    @property
    def init(self) -> str:
        """What a training algorithm starts from: the ER scheme of a rigl/edge-popup cell (``"dense"`` for an
        edge-popup run from a dense network), ``""`` when the method is itself the trained ER scheme."""
        if self.trainer == "strong":
            return "dense" if self.source_density is not None and self.source_density >= 1.0 else (self.er_method or "")
        if self.trainer == "rewire":
            return self.er_method or ""
        return ""

    @property
    def cell_id(self) -> str:
        """A stable id: method (with its ER start for rigl), source density and density, e.g.
        ``er-balanced-d0.01``, ``rigl-er-erk-d0.01``, ``edge-popup-s0.5-d0.1``."""
        src = "" if self.source_density is None else f"-s{self.source_density:g}"
        start = f"-{self.init}" if self.trainer == "rewire" else ""
        return f"{self.method}{start}{src}-d{self.density:g}"


@dataclass(frozen=True)
class Table:
    """One of the paper's tables as a grid.

    Attributes:
        number: the paper's number as a string (``"2"``, ``"17"``).
        title: what it shows, with the paper's caption in short.
        model, dataset: the paper's network and dataset (``cifar10``, ``cifar100``, ``tiny-imagenet``).
        metric: ``"test_acc"`` (percent) or ``"repairs"``.
        row_header, col_header: the paper's axis names.
        rows, cols: the paper's labels in the paper's order.
        cells: every (row, col) entry of the table that reports a number.
        recipes: trainer -> :class:`Recipe`.
        runs: the number of runs the paper averages over (its default for ``--seeds``).
        notes: anything about the paper's table a reader must know (missing text, interpretations).
    """

    number: str
    title: str
    model: str
    dataset: str
    metric: str
    row_header: str
    col_header: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    cells: tuple[GridCell, ...]
    recipes: dict[str, Recipe] = field(default_factory=dict)
    runs: int = 3
    notes: str = ""

    def cell(self, row: str, col: str) -> GridCell:
        for c in self.cells:
            if c.row == row and c.col == col:
                return c
        raise KeyError(f"Table {self.number} has no entry at row {row!r}, column {col!r}")

    def recipe(self, trainer: str) -> Recipe:
        return self.recipes[trainer]

    @property
    def densities(self) -> tuple[float, ...]:
        """The final densities in the paper's order."""
        return tuple(dict.fromkeys(c.density for c in self.cells))

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.method for c in self.cells))


def _density(sparsity: str) -> float:
    return round(1.0 - float(sparsity), 10)


def _weak_grid(methods: tuple[str, ...], sparsities: tuple[str, ...], *, methods_are_rows: bool
               ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[GridCell, ...]]:
    cells = []
    for s in sparsities:
        for m in methods:
            row, col = (m, s) if methods_are_rows else (s, m)
            cells.append(GridCell(row, col, METHOD_LABELS[m], _density(s), None, "weak", METHOD_LABELS[m]))
    rows, cols = (methods, sparsities) if methods_are_rows else (sparsities, methods)
    return rows, cols, tuple(cells)


def _weak_table(number: str, title: str, model: str, dataset: str, methods: tuple[str, ...],
                sparsities: tuple[str, ...], *, methods_are_rows: bool, runs: int = 3, notes: str = "") -> Table:
    rows, cols, cells = _weak_grid(methods, sparsities, methods_are_rows=methods_are_rows)
    recipes = {"weak": WEAK}
    if any(c.method == "er-imp" for c in cells):
        recipes["imp"] = IMP_BASELINE
    return Table(number, title, model, dataset, "test_acc", "ER method" if methods_are_rows else "Sparsity",
                 "Sparsity" if methods_are_rows else "ER method", rows, cols, cells, recipes, runs, notes)


def _arrow(label: str) -> tuple[float, float]:
    """``"0.5 → 0.9"`` (initial → final sparsity) -> (source density, final density)."""
    a, b = (x.strip() for x in label.split("→"))
    return _density(a), _density(b)


def _strong_table(number: str, title: str, model: str, dataset: str, cols: tuple[str, ...], *, runs: int = 3,
                  notes: str = "") -> Table:
    cells = []
    for col in cols:
        src, dens = _arrow(col)
        cells.append(GridCell("Test Acc.", col, "edge-popup", dens, src, "strong", "er-uniform"))
    return Table(number, title, model, dataset, "test_acc", "", "Sparsity (initial → final)", ("Test Acc.",),
                 cols, tuple(cells), {"strong": STRONG}, runs, notes)


def _rewired_table(number: str, title: str, sparsities: tuple[str, ...]) -> Table:
    methods = ("ERK", "Balanced", "Pyramidal")
    cols = tuple(f"{s} {kind}" for s in sparsities for kind in ("Original", "Rewired"))
    cells = []
    for m in methods:
        er = METHOD_LABELS[m]
        for s in sparsities:
            cells.append(GridCell(m, f"{s} Original", er, _density(s), None, "weak", er))
            cells.append(GridCell(m, f"{s} Rewired", "rigl", _density(s), None, "rewire", er))
    return Table(number, title, "vgg16", "cifar10", "test_acc", "ER Method", "Sparsity", methods, cols,
                 tuple(cells), {"weak": WEAK, "rewire": REWIRE}, 3)


def _flow_table(number: str, title: str, model: str, notes: str = "") -> Table:
    methods = ("Uniform", "ERK", "ER Snip", "Balanced (ours)", "Pyramidal (ours)")
    sparsities = ("0.5", "0.8", "0.9", "0.99", "0.999")
    cells = tuple(GridCell(m, s, METHOD_LABELS[m], _density(s), None, "flow", METHOD_LABELS[m])
                  for s in sparsities for m in methods)
    return Table(number, title, model, "cifar100", "repairs", "Method", "Sparsity", methods, sparsities, cells,
                 {"flow": FLOW}, 3, notes)


_ALL7 = ("Pyramidal", "Balanced", "Uniform", "ERK", "Snip (ER)", "Synflow (ER)", "IMP (ER)")
_ROWS5 = ("Balanced (ours)", "Pyramidal (ours)", "ERK", "Uniform", "ER Snip")
_HIGH = ("0.9", "0.99", "0.995", "0.999")
_LOW = ("0.5", "0.8", "0.9", "0.99")


def _tables() -> dict[str, Table]:
    t: list[Table] = [
        _strong_table("1", "Strong tickets in ER ResNet18 on CIFAR-10 (edge-popup, uniform ER source)", "resnet18",
                      "cifar10", ("0 → 0.9", "0.5 → 0.9", "0.7 → 0.9", "0.5 → 0.95", "0.8 → 0.95", "0.5 → 0.99"),
                      notes="The first column (0 → 0.9) starts from a dense network: the baseline."),
        _weak_table("2", "ER layerwise sparsities, VGG16 on CIFAR-10", "vgg16", "cifar10", _ALL7, _HIGH,
                    methods_are_rows=False),
        _weak_table("3", "ER layerwise sparsities, VGG19 on CIFAR-100", "vgg19", "cifar100", _ALL7, _LOW,
                    methods_are_rows=False),
        _rewired_table("4", "ER VGG16 rewired with RigL on CIFAR-10 (original vs rewired)", ("0.99", "0.995", "0.999")),
        _flow_table("5", "Flow repairs per scheme, ResNet on CIFAR-100", "resnet50",
                    notes="The paper's caption says ResNet18, its header says ResNet50; the paper's CIFAR-100 "
                          "network is ResNet50 (§3), which this grid uses. The count is the number of (layer, "
                          "direction) pairs repaired (the authors' num_corrected), as the caption's 'edges added' "
                          "is reported separately in each cell's result."),
        _flow_table("6", "Flow repairs per scheme, VGG19 on CIFAR-100", "vgg19"),
        _weak_table("7", "ER layerwise sparsities, ResNet18 on CIFAR-10", "resnet18", "cifar10", _ALL7, _HIGH,
                    methods_are_rows=False),
        _weak_table("8", "ER layerwise sparsities, ResNet50 on CIFAR-100", "resnet50", "cifar100", _ALL7[:5], _LOW,
                    methods_are_rows=False),
        _weak_table("9", "ER layerwise sparsities with CIs, VGG16 on CIFAR-10 (Table 2)", "vgg16", "cifar10", _ALL7,
                    _HIGH, methods_are_rows=False),
        _weak_table("10", "ER layerwise sparsities with CIs, VGG19 on CIFAR-100 (Table 3)", "vgg19", "cifar100",
                    _ALL7, _LOW, methods_are_rows=False),
        _strong_table("11", "Strong tickets in ER ResNet18 on CIFAR-10 (edge-popup)", "resnet18", "cifar10",
                      ("0.5 → 0.8", "0.5 → 0.9", "0.7 → 0.9", "0.5 → 0.95", "0.8 → 0.95", "0.5 → 0.99")),
        _strong_table("12", "Edge-popup baseline from a dense ResNet18 on CIFAR-10", "resnet18", "cifar10",
                      ("0 → 0.8", "0 → 0.9", "0 → 0.95", "0 → 0.99"),
                      notes="The paper text has only Table 12's caption, not its body: the columns are those of "
                            "the VGG16 baseline (Table 14) and there are no paper numbers to compare with."),
        _strong_table("13", "Strong tickets in ER VGG16 on CIFAR-10 (edge-popup)", "vgg16", "cifar10",
                      ("0.5 → 0.8", "0.5 → 0.9", "0.5 → 0.95", "0.5 → 0.99")),
        _strong_table("14", "Edge-popup baseline from a dense VGG16 on CIFAR-10", "vgg16", "cifar10",
                      ("0 → 0.8", "0 → 0.9", "0 → 0.95", "0 → 0.99")),
        _strong_table("15", "Strong tickets in ER ResNet110 on CIFAR-100 (edge-popup)", "resnet110", "cifar100",
                      ("0 → 0.9", "0.5 → 0.9", "0.7 → 0.9"), runs=1,
                      notes="The paper text cuts the third label to '0.7 -'; it is read as 0.7 → 0.9 like its "
                            "neighbours. The paper reports one run."),
        _weak_table("16", "ER layerwise sparsities, ResNet110 on CIFAR-100", "resnet110", "cifar100", _ROWS5,
                    ("0.5", "0.8", "0.9", "0.95"), methods_are_rows=True),
        Table("17", "IMP baseline, ResNet110 on CIFAR-100", "resnet110", "cifar100", "test_acc",
              "", "Sparsity", ("Test Acc.",), ("0.5", "0.9"),
              tuple(GridCell("Test Acc.", s, "imp", _density(s), None, "imp") for s in ("0.5", "0.9")),
              {"imp": IMP_BASELINE}, 1, "The paper reports one IMP run per sparsity."),
        _weak_table("18", "ER layerwise sparsities, VGG19 on Tiny-ImageNet", "vgg19", "tiny-imagenet", _ROWS5, _LOW,
                    methods_are_rows=True),
        _weak_table("19", "ER layerwise sparsities, ResNet20 on Tiny-ImageNet", "resnet20", "tiny-imagenet", _ROWS5,
                    _LOW, methods_are_rows=True),
        _rewired_table("20", "ER VGG16 rewired with RigL on CIFAR-10, with CIs (Table 4)", ("0.99", "0.995", "0.999")),
    ]
    s2s = ("0.5 → 0.99", "0.9 → 0.99", "0.95 → 0.99")
    rows21 = ("Balanced (ours)", "Pyramidal (ours)", "ERK")
    cells21 = []
    for m in rows21:
        for col in s2s:
            src, dens = _arrow(col)
            er = METHOD_LABELS[m]
            cells21.append(GridCell(m, col, "rigl", dens, src, "rewire", er))
    t.append(Table("21", "Sparse-to-sparse RigL from ER VGG16 on CIFAR-10", "vgg16", "cifar10", "test_acc", "ER Method",
                   "Sparsity (initial → final)", rows21, s2s, tuple(cells21), {"rewire": REWIRE}, 3))
    return {x.number: x for x in t}


TABLES: dict[str, Table] = _tables()


def list_tables() -> list[Table]:
    """All tables, in the paper's numbering."""
    return [TABLES[k] for k in sorted(TABLES, key=int)]


def get_table(name: str | int) -> Table:
    """The table numbered ``name`` (``2``, ``"2"``, ``"table2"``, ``"A7"`` for appendix Table 7).

    Raises:
        SparsekitError: no such table; the message lists the valid numbers.
    """
    key = str(name).strip().lower().removeprefix("table").strip().lstrip("a")
    if key not in TABLES:
        raise SparsekitError(f"unknown table '{name}': the paper's experimental tables are "
                             f"{', '.join(sorted(TABLES, key=int))} (see 'sparsekit reproduce --list')")
    return TABLES[key]


def with_recipe(table: Table, trainer: str, **changes: Any) -> Table:
    """A copy of ``table`` whose ``trainer`` recipe has ``changes`` (e.g. fewer epochs)."""
    recipes = dict(table.recipes)
    recipes[trainer] = replace(recipes[trainer], **changes)
    return replace(table, recipes=recipes)


def close(a: float | None, b: float | None) -> bool:
    """Densities equal up to float noise (None only equals None)."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
