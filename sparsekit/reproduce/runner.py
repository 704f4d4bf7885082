"""Run a paper table as a resumable grid: :func:`run` (``sparsekit reproduce``).

A table (:mod:`sparsekit.reproduce.grids`) expands into *jobs*, one per cell and seed. Each job owns
a folder ``DIR/cells/<cell>/seed-<k>/`` holding

* ``config.json`` -- everything that determines the result (table, cell, model, data fingerprint,
  recipe, scale, seed); written when the job starts;
* ``checkpoints/`` -- the training engine's per-epoch checkpoints (:mod:`sparsekit.train.engine`): a
  killed job resumes from its last finished epoch and ends bit-identical to an uninterrupted one;
* ``history.json`` and ``ticket.safetensors`` -- the per-epoch history and the final ticket;
* ``result.json`` -- written last (atomically): a job is *finished* when it exists, says ``done`` and
  its config equals the one this run would use.

A rerun skips finished jobs, resumes interrupted ones and refuses jobs whose config changed (naming
them and the changed settings) unless ``rerun_changed=True``, which moves the old folder to
``DIR/superseded/`` (nothing is deleted) and runs the job again. Each job is guarded by an exclusive
lock on ``DIR/cells/<cell>/seed-<k>/.lock`` (released by the OS if the process dies), so two runs on
one DIR never train the same job; the second skips it and reports it as running elsewhere.

Jobs run in this process, in ``jobs`` worker processes (CPU), one process per device of ``devices``,
or under ``torchrun`` (rank ``r`` of ``w`` takes jobs ``r::w``, each on its own GPU; the ranks never
communicate). Afterwards ``results.csv`` (:data:`RESULT_COLUMNS` first), ``summary.md`` and
``plots/`` are rebuilt from all result files under a lock, so the last process to finish writes the
complete files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .._io import atomic_write_text
from ..errors import SparsekitError
from ..plots import RESULTS_COLUMNS
from . import _models
from .grids import GridCell, Recipe, Table, close, get_table
from .summary import render_summary

__all__ = ["run", "expand", "Job", "RunResult", "RESULT_COLUMNS", "scale_table", "estimate_gpu_hours",
           "paper_numbers_available"]

#: the agreed columns of ``results.csv``, in order (defined where results.csv is read back)
RESULT_COLUMNS = RESULTS_COLUMNS
#: columns after :data:`RESULT_COLUMNS`
EXTRA_COLUMNS = ("init", "paper_row", "paper_col", "trainer", "paper_ref", "error")
SCALES = ("full", "tiny")
_CONFIG_VERSION = 1

#: tiny scale: a few epochs of every trainer
_TINY_RECIPE = {"epochs": 6, "levels": 2, "epochs_per_level": 3, "update_every": 4, "imp_rounds": 2,
                "imp_epochs_per_round": 2, "batch_size": 128}
TINY_DATA = "digits:flat=false"
TINY_SEEDS = 2


# --------------------------------------------------------------------------------------------------
# expansion


@dataclass(frozen=True)
class Job:
    """One cell of a table with one seed (one row of results.csv)."""

    table: str
    model: str
    cell: GridCell
    seed: int

    @property
    def cell_id(self) -> str:
        return f"{self.model}-{self.cell.cell_id}"

    @property
    def folder(self) -> str:
        return f"cells/{self.cell_id}/seed-{self.seed}"


def scale_table(table: Table, scale: str) -> Table:
    """``table`` at ``scale``: ``"full"`` is the paper's; ``"tiny"`` keeps the cells of the first two
    (source, final) density pairs of the paper's order and runs every trainer for a few epochs."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "full":
        return table
    pairs = list(dict.fromkeys((c.source_density, c.density) for c in table.cells))[:2]
    cells = tuple(c for c in table.cells if (c.source_density, c.density) in pairs)
    recipes = {k: replace(r, **{f: v for f, v in _TINY_RECIPE.items() if f != "epochs" or r.trainer != "flow"})
               for k, r in table.recipes.items()}
    return replace(table, cells=cells, recipes=recipes)


def _parse_filter(values: Sequence[Any] | None, what: str) -> list[Any] | None:
    if values is None:
        return None
    if isinstance(values, (str, float, int)):
        values = [values]
    out = [v for v in values if v is not None and v != ""]
    if not out:
        raise ValueError(f"{what} filter is empty; leave it out to run all {what}")
    return out


def expand(table: Table | str | int, *, models: Sequence[str] | None = None, methods: Sequence[str] | None = None,
           densities: Sequence[float] | None = None, seeds: int | None = None, scale: str = "full") -> list[Job]:
    """The jobs of ``table``: its cells (paper order) x ``models`` x seeds ``0..seeds-1``.

    Args:
        table: a :class:`Table` or its number.
        models: run the grid on these networks instead of the paper's (default: the table's model).
        methods: keep only cells of these methods (``er-balanced``, ``rigl``, ``edge-popup``, ``imp``...).
        densities: keep only cells of these final densities.
        seeds: seeds per cell (default: the paper's number of runs; 2 at tiny scale).
        scale: ``"full"`` or ``"tiny"`` (see :func:`scale_table`).

    Raises:
        SparsekitError: a filter matches nothing in the table (the message lists what the table has).
    """
    t = scale_table(get_table(table) if not isinstance(table, Table) else table, scale)
    cells = list(t.cells)
    ms = _parse_filter(methods, "methods")
    if ms is not None:
        unknown = [m for m in ms if m not in t.methods]
        if unknown:
            raise SparsekitError(f"Table {t.number} has no method {', '.join(map(repr, unknown))}"
                                 f"{' at tiny scale' if scale == 'tiny' else ''}; its methods: {', '.join(t.methods)}")
        cells = [c for c in cells if c.method in ms]
    ds = _parse_filter(densities, "densities")
    if ds is not None:
        ds = [float(d) for d in ds]
        unknown = [d for d in ds if not any(close(d, x) for x in t.densities)]
        if unknown:
            raise SparsekitError(f"Table {t.number} has no density {', '.join(f'{d:g}' for d in unknown)}"
                                 f"{' at tiny scale' if scale == 'tiny' else ''}; its densities (1 - sparsity): "
                                 f"{', '.join(f'{d:g}' for d in t.densities)}")
        cells = [c for c in cells if any(close(c.density, d) for d in ds)]
    if not cells:
        raise SparsekitError(f"the filters leave no cell of Table {t.number} to run")
    mods = _parse_filter(models, "models") or [t.model]
    n = seeds if seeds is not None else (TINY_SEEDS if scale == "tiny" else t.runs)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"seeds must be a positive int, got {n!r}")
    return [Job(t.number, m.strip().lower(), c, s) for m in mods for c in cells for s in range(n)]


# --------------------------------------------------------------------------------------------------
# GPU-hour estimate


_FLOPS_CACHE: dict[tuple[str, tuple[int, ...], int], float] = {}
#: sustained training throughput assumed for the estimate: an A100-class GPU, bf16, batch 128, CIFAR-size convs
ASSUMED_FLOPS_PER_S = 1.0e13
_DATASET_SIZES = {"cifar10": (50_000, 10_000, (3, 32, 32), 10), "cifar100": (50_000, 10_000, (3, 32, 32), 100),
                  "tiny-imagenet": (100_000, 10_000, (3, 64, 64), 200)}


def _forward_flops(model: str, shape: tuple[int, ...], classes: int) -> float:
    key = (model, shape, classes)
    if key not in _FLOPS_CACHE:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            net = _models.build_model(model, "full", shape, classes)
            x = torch.empty((1, *shape))
        with FlopCounterMode(display=False) as fc:
            net(x)
        _FLOPS_CACHE[key] = float(fc.get_total_flops())
    return _FLOPS_CACHE[key]


def _job_epochs(table: Table, cell: Any) -> int:
    r = table.recipe(cell.trainer)
    epochs = r.train_epochs()
    if cell.method == "er-imp":
        epochs += table.recipe("imp").imp_rounds * table.recipe("imp").imp_epochs_per_round
    if cell.trainer == "imp":
        epochs += r.imp_rounds * r.imp_epochs_per_round
    return epochs


def estimate_gpu_hours(table: Table | str | int, jobs: Sequence[Job] | None = None) -> float:
    """An *estimate* of the GPU hours of ``table`` at full scale (all its cells x the paper's runs).

    ``3 x forward FLOPs x training samples x epochs`` (forward + backward) plus one test pass per epoch,
    at :data:`ASSUMED_FLOPS_PER_S`. Masks do not reduce the cost (dense kernels), data loading and
    edge-popup's sorting are not counted: take it as good to a factor of about two.
    """
    t = get_table(table) if not isinstance(table, Table) else table
    jobs = list(jobs) if jobs is not None else expand(t)
    n_train, n_test, shape, classes = _DATASET_SIZES[t.dataset]
    total = 0.0
    for j in jobs:
        f = _forward_flops(j.model, shape, classes)
        e = _job_epochs(t, j.cell)
        total += e * (3 * n_train + n_test) * f
    return total / ASSUMED_FLOPS_PER_S / 3600


# --------------------------------------------------------------------------------------------------
# paper numbers (provided by sparsekit.reproduce.paper_numbers when installed)


def _paper_loader() -> Callable[[str], list[dict[str, Any]]] | None:
    from .paper_numbers import paper_numbers

    return paper_numbers


def paper_numbers_available() -> bool:
    return _paper_loader() is not None


_SYNONYMS = {"from": "imp", "edgepopup": "edge-popup", "ep": "edge-popup"}


def _method_key(method: str, init: str = "") -> frozenset[str]:
    """A method name's words without separators, the generic ``er``/``ours`` and with synonyms
    (``er-from`` = ``er-imp``); the ER start (``init``) is part of the key: ``rigl`` from ``er-erk`` is
    not ``rigl`` from ``er-balanced``."""
    import re

    words = [w for w in re.split(r"[^a-z0-9]+", f"{method} {init}".lower()) if w and w not in ("er", "ours")]
    out: set[str] = set()
    for w in words:
        out.update(_SYNONYMS.get(w, w).split("-"))
    return frozenset(out)


def match_paper(table: Table, cell: GridCell, paper: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper's row for ``cell``, or None when there is none or it is not certain which.

    Candidates have the cell's metric, final density and source density. Among them the row whose
    method names the same method (:func:`_method_key`) is the match; a candidate with another method
    name is accepted only when it is the only one and no other cell of the table shares its densities.
    Never a guess: a rewired cell is not matched with the original network's number.
    """
    def src(p: dict[str, Any]) -> float | None:
        return None if p.get("source_density") in (None, "") else float(p["source_density"])

    cand = [p for p in paper if p.get("metric", table.metric) == table.metric
            and close(float(p["density"]), cell.density) and close(src(p), cell.source_density)]
    mine = _method_key(cell.method, cell.init)
    same = [p for p in cand if _method_key(str(p.get("method", "")), str(p.get("init") or "")) == mine]
    if same:
        return same[0] if len(same) == 1 else None
    siblings = [c for c in table.cells if close(c.density, cell.density) and close(c.source_density,
                                                                                    cell.source_density)]
    return cand[0] if len(cand) == 1 and len(siblings) == 1 else None


# --------------------------------------------------------------------------------------------------
# locks


class _Lock:
    """An exclusive advisory lock on a file (``fcntl.flock``); the OS releases it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            warnings.warn("sparsekit reproduce: file locks need fcntl (Linux/macOS); two runs on one folder "
                          "are not kept apart on this system", stacklevel=3)
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = _Lock(path)
    lock.acquire(blocking=True)
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# one job


@dataclass
class _Context:
    table: Table
    data_spec: str
    data: Any
    scale: str
    out: Path
    device: str
    log: Callable[[str], None]
    progress: bool = False
    fingerprint: dict[str, Any] | None = None


def _data_fingerprint(data: Any) -> dict[str, Any]:
    from ..train.engine import _data_key

    return {"name": data.name, "train": _data_key(data.train), "test": None if data.test is None else len(data.test),
            "num_classes": data.num_classes, "input_shape": list(data.input_shape)}


def job_config(ctx: _Context, job: Job) -> dict[str, Any]:
    """Everything that determines a job's result (compared on resume and skip)."""
    if ctx.fingerprint is None:
        ctx.fingerprint = _data_fingerprint(ctx.data)
    c = job.cell
    cfg = {
        "format": "sparsekit-reproduce-cell", "version": _CONFIG_VERSION, "table": job.table, "cell": job.cell_id,
        "seed": job.seed, "model": job.model, "architecture": _models.model_description(job.model, ctx.scale),
        "method": c.method, "density": c.density, "source_density": c.source_density, "trainer": c.trainer,
        "er_method": c.er_method, "recipe": ctx.table.recipe(c.trainer).to_dict(), "scale": ctx.scale,
        "data": ctx.fingerprint,
    }
    if c.method == "er-imp" or c.trainer == "imp":
        cfg["imp_recipe"] = ctx.table.recipe("imp").to_dict()
    return cfg


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: was {a.get(k)!r}, now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _optimizer(recipe: Recipe) -> Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] | None:
    if recipe.optimizer == "adam":
        return lambda params: torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer != "sgd":
        raise ValueError(f"recipe optimizer must be 'sgd' or 'adam', got {recipe.optimizer!r}")
    return None


def _train_args(recipe: Recipe, ctx: _Context, seed: int, ckdir: Path) -> dict[str, Any]:
    return {"lr": recipe.lr, "momentum": recipe.momentum, "weight_decay": recipe.weight_decay,
            "batch_size": recipe.batch_size, "device": ctx.device, "seed": seed, "checkpoint_dir": ckdir,
            "resume": True, "progress": ctx.progress, "eval_data": ctx.data.test}


def _new_model(ctx: _Context, job: Job) -> torch.nn.Module:
    torch.manual_seed(job.seed)  # the initialisation is a function of the seed
    return _models.build_model(job.model, ctx.scale, tuple(ctx.data.input_shape), ctx.data.num_classes)


def _run_imp(ctx: _Context, job: Job, model: torch.nn.Module, density: float, folder: Path) -> Any:
    from ..pruners import imp

    r = ctx.table.recipe("imp")
    args = _train_args(r, ctx, job.seed, folder / "imp")
    return imp(model, ctx.data.train, density, r.imp_rounds, r.imp_epochs_per_round, optimizer=_optimizer(r),
               schedule=r.schedule, **args)


def _prune(ctx: _Context, job: Job, model: torch.nn.Module, method: str, density: float, flow: str,
           folder: Path) -> Any:
    from .._prune import prune

    if method == "er-snip":
        return prune(model, "er-snip", density, seed=job.seed, flow=flow, data=ctx.data.train)
    if method == "er-synflow":
        return prune(model, "er-synflow", density, seed=job.seed, flow=flow, input_shape=tuple(ctx.data.input_shape))
    if method == "er-imp":  # IMP's layerwise densities, randomised (paper §3, "IMP (ER)")
        source = _new_model(ctx, job)
        imp_ticket = _run_imp(ctx, job, source, density, folder)
        del source
        return prune(model, "er-from", density, seed=job.seed, flow=flow, ticket=imp_ticket)
    return prune(model, method, density, seed=job.seed, flow=flow)


def _execute(ctx: _Context, job: Job, folder: Path) -> dict[str, Any]:
    """Run one job; returns value, epochs, history and ticket (objects) and extra fields."""
    from ..train import fit_strong, fit_weak, rewire

    c = job.cell
    r = ctx.table.recipe(c.trainer)
    ck = folder / "checkpoints"
    model = _new_model(ctx, job)
    extra: dict[str, Any] = {}
    if c.trainer == "flow":
        ticket = _prune(ctx, job, model, c.method, c.density, r.flow, folder)
        totals = ticket.report().totals
        extra = {"edges_added": totals["edges_added"], "realised_density": totals["realised_density"]}
        return {"value": float(totals["num_corrected"]), "epochs": 0, "history": None, "ticket": ticket, **extra}
    if c.trainer == "weak":
        ticket = _prune(ctx, job, model, c.method, c.density, r.flow, folder)
        history = fit_weak(model, ctx.data.train, epochs=r.epochs, schedule=r.schedule, optimizer=_optimizer(r),
                           **_train_args(r, ctx, job.seed, ck))
    elif c.trainer == "strong":
        ticket = fit_strong(model, ctx.data.train, density=c.density, epochs_per_level=r.epochs_per_level,
                            er_density=c.source_density if c.source_density is not None else 1.0,
                            er_method=r.source_method, levels=r.levels, schedule=r.schedule, flow=r.flow,
                            **_train_args(r, ctx, job.seed, ck))
        history = ticket.history
    elif c.trainer == "rewire":
        start = c.source_density if c.source_density is not None else c.density
        _prune(ctx, job, model, c.er_method, start, r.flow, folder)
        ticket = rewire(model, ctx.data.train, epochs=r.epochs, method="rigl",
                        final_density=c.density if c.source_density is not None else None,
                        update_every=r.update_every, drop_fraction=r.drop_fraction, schedule=r.schedule,
                        optimizer=_optimizer(r), **_train_args(r, ctx, job.seed, ck))
        history = ticket.history
    elif c.trainer == "imp":
        ticket = _run_imp(ctx, job, model, c.density, folder)
        history = fit_weak(model, ctx.data.train, epochs=r.epochs, schedule=r.schedule, optimizer=_optimizer(r),
                           **_train_args(r, ctx, job.seed, ck))
    else:  # pragma: no cover - Recipe validates trainer
        raise ValueError(f"unknown trainer {c.trainer!r}")
    if not history or history[-1].eval_acc is None:
        raise SparsekitError("the run has no test accuracy: the data has no test split (give --data with one)")
    return {"value": 100.0 * float(history[-1].eval_acc), "epochs": len(history), "history": history,
            "ticket": ticket, **extra}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _supersede(out: Path, folder: Path) -> Path:
    dest = out / "superseded" / f"{folder.parent.name}-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(dest.name.split("~")[0] + f"~{n}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(dest))
    return dest


def run_job(ctx: _Context, job: Job, *, rerun_changed: bool = False) -> str:
    """Run (or resume) one job under its lock; returns ``"done"``, ``"failed"``, ``"skipped"`` or ``"busy"``."""
    folder = ctx.out / job.folder
    folder.mkdir(parents=True, exist_ok=True)
    lock = _Lock(folder / ".lock")
    if not lock.acquire(blocking=False):
        ctx.log(f"  {job.cell_id} seed {job.seed}: running in another process (pid {lock.holder()}); skipped here")
        return "busy"
    try:
        cfg = job_config(ctx, job)
        result = _read_json(folder / "result.json")
        if result is not None and result.get("status") == "done" and result.get("config") == cfg:
            return "skipped"
        saved = _read_json(folder / "config.json")
        if saved is not None and saved != cfg:
            if not rerun_changed:
                raise SparsekitError(f"{folder}: the cell's settings changed ({'; '.join(_diff(saved, cfg))}); pass "
                                     "--rerun-changed to run it again (the old results move to superseded/) or use "
                                     "another --out")
            lock.release()
            moved = _supersede(ctx.out, folder)
            ctx.log(f"  {job.cell_id} seed {job.seed}: settings changed, old results moved to {moved}")
            folder.mkdir(parents=True, exist_ok=True)
            if not lock.acquire(blocking=False):
                return "busy"
        atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2) + "\n")
        t0 = time.perf_counter()
        try:
            res = _execute(ctx, job, folder)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 -- a failed cell is recorded and named; the others still run
            from ..cli import debug_enabled

            msg = " ".join(f"{type(e).__name__}: {e}".split())
            if debug_enabled():
                traceback.print_exc()
            atomic_write_text(folder / "result.json", json.dumps(
                {"status": "failed", "error": msg, "config": cfg, "wall_s": time.perf_counter() - t0}, indent=2) + "\n")
            ctx.log(f"  {job.cell_id} seed {job.seed}: FAILED: {msg}")
            return "failed"
        wall = time.perf_counter() - t0
        history_rel = ticket_rel = ""
        if res["history"] is not None:
            res["history"].to_json(folder / "history.json")
            history_rel = f"{job.folder}/history.json"
        if res["ticket"] is not None:
            from ..formats.ticket_file import save_ticket

            save_ticket(res["ticket"], folder / "ticket.safetensors", overwrite=True)
            ticket_rel = f"{job.folder}/ticket.safetensors"
        record = {"status": "done", "value": res["value"], "epochs": res["epochs"], "wall_s": round(wall, 3),
                  "history": history_rel, "ticket": ticket_rel, "sparsekit": __version__, "device": ctx.device,
                  "config": cfg, **{k: v for k, v in res.items() if k not in ("value", "epochs", "history", "ticket")}}
        atomic_write_text(folder / "result.json", json.dumps(record, indent=2) + "\n")
        ctx.log(f"  {job.cell_id} seed {job.seed}: {res['value']:.4g} ({wall:.1f} s)")
        return "done"
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# results.csv, summary.md, plots


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(round(x, 10)) if math.isfinite(x) else str(x)
    return str(x)


def _collect(ctx: _Context, jobs: Sequence[Job], paper: Sequence[dict[str, Any]] | None
             ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    rows = []
    matched: dict[str, dict[str, Any]] = {}
    for job in jobs:
        c = job.cell
        folder = ctx.out / job.folder
        res = _read_json(folder / "result.json")
        cfg = job_config(ctx, job)
        p = match_paper(ctx.table, c, paper) if paper is not None and job.model == ctx.table.model else None
        if p is not None:
            matched[job.cell_id] = p
        status, value, error = "pending", None, ""
        if res is not None and res.get("config") == cfg:
            status = res.get("status", "pending")
            value = res.get("value") if status == "done" else None
            error = res.get("error", "") if status == "failed" else ""
        elif res is not None:
            status, error = "stale", "a result with other settings (rerun with them, or with --rerun-changed)"
        elif (folder / ".lock").exists():
            lk = _Lock(folder / ".lock")
            if not lk.acquire(blocking=False):
                status = "running"
            else:
                lk.release()
        row = {"table": job.table, "cell": job.cell_id, "model": job.model, "dataset": ctx.data.name,
               "method": c.method, "density": c.density, "source_density": c.source_density, "seed": job.seed,
               "metric": ctx.table.metric, "value": value,
               "paper_value": None if p is None else float(p["value"]),
               "paper_ci": None if p is None or p.get("ci") in (None, "") else float(p["ci"]),
               "status": status, "epochs": res.get("epochs") if status == "done" else None,
               "wall_s": res.get("wall_s") if status == "done" else None,
               "history": res.get("history", "") if status == "done" else "",
               "ticket": res.get("ticket", "") if status == "done" else "",
               "init": c.init, "paper_row": c.row, "paper_col": c.col, "trainer": c.trainer,
               "paper_ref": "" if p is None else p.get("ref", ""), "error": error,
               "_row": c.row, "_col": c.col}
        rows.append(row)
    return rows, matched


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = RESULT_COLUMNS + EXTRA_COLUMNS
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r[k]) for k in cols])
    return buf.getvalue()


def _plots(ctx: _Context, rows: Sequence[dict[str, Any]], paper: Sequence[dict[str, Any]] | None) -> list[str]:
    """Plots via :mod:`sparsekit.plots` when installed; returns notes on what was (not) drawn."""
    from .. import plots
    out = ctx.out / "plots"
    out.mkdir(exist_ok=True)
    notes: list[str] = []
    done = [r for r in rows if r["status"] == "done"]
    t = ctx.table

    def attempt(what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except ImportError as e:
            notes.append(f"plots: {what} not drawn ({e})")
        except Exception as e:  # noqa: BLE001 -- results are written; a plot failure is reported, not fatal
            notes.append(f"plots: {what} failed ({type(e).__name__}: {e})")

    if done and t.metric == "test_acc":
        rows_plain = [{k: v for k, v in r.items() if not k.startswith("_")} for r in done]
        attempt("accuracy vs density", lambda: plots.plot_accuracy_vs_density(
            rows_plain, out / f"table{t.number}_accuracy.png", paper=list(paper) if paper else None,
            title=f"Table {t.number}: {t.title} ({ctx.scale})"))
    schemes = [m for m in dict.fromkeys(c.er_method for c in t.cells if c.er_method)
               if m in ("er-uniform", "er-erk", "er-balanced", "er-pyramidal")]
    if schemes:
        def layer_plot() -> None:
            with torch.device("meta"):  # only shapes are read: no weights to initialise
                model = _models.build_model(t.model, ctx.scale, tuple(ctx.data.input_shape), ctx.data.num_classes)
            plots.plot_layer_densities(model, schemes, t.densities[0], out / f"table{t.number}_layer_densities.png")

        attempt("layer densities", layer_plot)
    for r in done:
        if int(r["seed"]) != 0:
            continue
        if r["ticket"] and t.metric == "repairs":
            attempt(f"ticket {r['cell']}", lambda r=r: plots.plot_ticket(ctx.out / r["ticket"],
                                                                          out / f"ticket_{r['cell']}.png"))
        if r["history"]:
            attempt(f"history {r['cell']}", lambda r=r: plots.plot_history(ctx.out / r["history"],
                                                                            out / f"history_{r['cell']}.png"))
    return notes


def write_outputs(ctx: _Context, jobs: Sequence[Job], *, plots: bool = True) -> list[dict[str, Any]]:
    """Rebuild results.csv, summary.md (and plots) from the result files, under the folder's lock."""
    loader = _paper_loader()
    paper = None
    paper_note = ""
    if loader is not None:
        try:
            paper = loader(ctx.table.number)
        except SparsekitError as e:  # a table whose numbers are not in the paper's text (Table 12)
            paper_note = f"paper: no numbers for this table ({e})"
    with _locked(ctx.out / ".outputs.lock"):
        rows, matched = _collect(ctx, jobs, paper)
        atomic_write_text(ctx.out / "results.csv", _csv_text(rows))
        notes = [f"data: {ctx.data.name} ({len(ctx.data.train)} train / "
                 f"{len(ctx.data.test) if ctx.data.test is not None else 0} test samples; augmentation: the "
                 "loader's standard, random crop + flip for CIFAR/Tiny-ImageNet, none for digits/synthetic)"]
        for trainer, recipe in ctx.table.recipes.items():
            notes.append(f"recipe {trainer}: {recipe.describe()}")
        if paper_note:
            notes.append(paper_note)
        if plots and any(r["status"] == "done" for r in rows):
            notes += _plots(ctx, rows, paper)
        text = render_summary(ctx.table, rows, paper_rows={f"{j.model}-{j.cell.cell_id}": matched[j.cell_id]
                                                           for j in jobs if j.cell_id in matched},
                              paper_available=loader is not None, scale=ctx.scale, header_notes=notes)
        atomic_write_text(ctx.out / "summary.md", text + "\n")
    return rows


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class RunResult:
    """What :func:`run` did. ``rows`` are the results.csv rows (dicts)."""

    out: Path
    table: Table
    rows: list[dict[str, Any]]
    ran: int
    skipped: int
    failed: int
    busy: int

    @property
    def complete(self) -> bool:
        return all(r["status"] == "done" for r in self.rows)


def _torchrun() -> tuple[int, int, int] | None:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def _single_process_env() -> Iterator[None]:
    """Hide torchrun's variables from the training engine: each rank trains its own jobs alone."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    os.environ.update({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load_data(spec: str) -> Any:
    from ..data import load_data

    return load_data(spec)


def _worker(payload: dict[str, Any]) -> dict[str, int]:
    """A worker process: run its share of the jobs on its device."""
    torch.set_num_threads(payload["threads"])
    data = _load_data(payload["data_spec"])
    say = (lambda s: print(s, flush=True)) if payload["log"] else (lambda s: None)
    ctx = _Context(payload["table"], payload["data_spec"], data, payload["scale"], Path(payload["out"]),
                   payload["device"], say)
    counts = {"done": 0, "failed": 0, "skipped": 0, "busy": 0}
    for job in payload["jobs"]:
        counts[run_job(ctx, job, rerun_changed=payload["rerun_changed"])] += 1
    return counts


def run(
    table: str | int | Table,
    *,
    out: str | os.PathLike,
    data: str | None = None,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    densities: Sequence[float] | None = None,
    seeds: int | None = None,
    scale: str = "full",
    device: str = "auto",
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    epochs: int | None = None,
    any_data: bool = False,
    rerun_changed: bool = False,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Reproduce one of the paper's tables: run its grid, resumably, and write results.csv and summary.md.

    Args:
        table: the table's number (``2``, ``"17"``; see ``sparsekit reproduce --list``) or a :class:`Table`.
        out: the run's folder (created). Rerunning with the same folder skips finished jobs and
            resumes interrupted ones.
        data: a data spec as for ``sparsekit fit --data`` (``cifar10:/data``, ``digits``, ``synthetic:...``);
            default at tiny scale ``digits:flat=false``; required at full scale.
        models, methods, densities, seeds, scale: see :func:`expand`.
        device: ``"auto"``, ``"cpu"``, ``"cuda:1"``... for in-process jobs.
        jobs: worker processes on ``device`` (CPU runs; each gets ``cpu_count / jobs`` threads).
        devices: one worker process per device, e.g. ``["cuda:0", "cuda:1"]`` (overrides ``jobs``/``device``).
        epochs: override the training epochs of every trainer of the table (weak/rewire/imp epochs,
            strong epochs per level) -- a changed setting, recorded in each job's config.
        any_data: run a full-scale table on another dataset than the paper's (otherwise an error).
        rerun_changed: run jobs whose settings changed again (old folders move to ``superseded/``)
            instead of refusing.
        plots: draw plots with :mod:`sparsekit.plots` when available.
        log: called with one line per job (default: print nothing); worker processes print their lines.
        progress: the training engine's progress bar and per-epoch lines (in-process jobs only).

    Returns:
        A :class:`RunResult`; ``result.complete`` is False while jobs are pending, running elsewhere or failed.

    Raises:
        SparsekitError: unknown table, a filter matching nothing, data of another dataset than the
            table's at full scale, or jobs whose settings changed (without ``rerun_changed``).
    """
    t = scale_table(get_table(table) if not isinstance(table, Table) else table, scale)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        t = replace(t, recipes={k: r if r.trainer == "flow" else replace(
            r, epochs=epochs, epochs_per_level=epochs, imp_epochs_per_round=epochs) for k, r in t.recipes.items()})
    if data is None:
        if scale != "tiny":
            raise ValueError(f"Table {t.number} at full scale needs data: give the data spec of {t.dataset} "
                             f"(e.g. --data {t.dataset}:/path/to/root), or use --scale tiny")
        data = TINY_DATA
    if seeds is None and scale == "tiny":
        seeds = TINY_SEEDS
    job_list = expand(t, models=models, methods=methods, densities=densities, seeds=seeds, scale="full")
    loaded = _load_data(data)
    if scale == "full" and loaded.name != t.dataset and not any_data:
        raise SparsekitError(f"Table {t.number} is on {t.dataset} but --data gives {loaded.name}; give "
                             f"{t.dataset} data, or pass --any-data to run the grid on {loaded.name}")
    for m in dict.fromkeys(j.model for j in job_list):  # fail before any training on a model the data cannot feed
        _models.build_model(m, scale, tuple(loaded.input_shape), loaded.num_classes)
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"--out {outdir} is a file; give a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    ctx = _Context(t, data, loaded, scale, outdir, device, say, progress)
    tr = _torchrun()
    if tr is not None and (devices or jobs > 1):
        raise ValueError("under torchrun each rank is one worker on its own GPU (LOCAL_RANK): leave out --jobs and "
                         "--devices")
    for d in (list(devices) if devices else [device]):
        _check_device(d)
    mine = job_list
    if tr is not None:
        rank, world, local = tr
        mine = job_list[rank::world]
        if device == "auto":
            ctx.device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        say(f"torchrun rank {rank}/{world}: {len(mine)} of {len(job_list)} jobs on {ctx.device}")
    previous = _read_json(outdir / "run.json")
    if previous is None and (outdir / "run.json").exists():  # it lists the jobs of earlier runs: never overwrite it
        raise SparsekitError(f"{outdir / 'run.json'} is not a readable run record; move it away (or give another "
                             "--out) to start this folder's record afresh")
    if previous is not None and str(previous.get("table")) != t.number:
        raise SparsekitError(f"{outdir} holds a run of Table {previous.get('table')}; give another --out for "
                             f"Table {t.number} (its results.csv and summary.md would be replaced)")
    _check_changed(ctx, mine, rerun_changed)
    listed = _union_jobs(t, job_list, previous)  # results.csv keeps the jobs of earlier runs with other filters
    atomic_write_text(outdir / "run.json", json.dumps({
        "table": t.number, "scale": scale, "data": data, "models": list(dict.fromkeys(j.model for j in job_list)),
        "methods": list(dict.fromkeys(j.cell.method for j in job_list)), "seeds": 1 + max(j.seed for j in job_list),
        "jobs": len(job_list), "sparsekit": __version__, "recipes": {k: r.to_dict() for k, r in t.recipes.items()},
        "job_ids": [[j.model, j.cell.row, j.cell.col, j.seed] for j in listed]}, indent=2) + "\n")
    counts = {"done": 0, "failed": 0, "skipped": 0, "busy": 0}
    workers = list(devices) if devices else ([device] * jobs if jobs > 1 else [])
    if tr is not None or len(workers) <= 1:
        if len(workers) == 1:
            ctx.device = workers[0]
        threads = torch.get_num_threads()
        try:
            if scale == "tiny":  # tiny networks run fastest (and unaffected by other processes) on one thread
                torch.set_num_threads(1)
            with _single_process_env() if tr is not None else contextlib.nullcontext():
                for i, job in enumerate(mine, 1):
                    say(f"[{i}/{len(mine)}] {job.cell_id} seed {job.seed}")
                    counts[run_job(ctx, job, rerun_changed=rerun_changed)] += 1
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing as mp

        threads = 1 if scale == "tiny" else max(1, (os.cpu_count() or 1) // len(workers))
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        payloads = [{"table": t, "data_spec": data, "scale": scale, "out": str(outdir), "device": dev,
                     "jobs": mine[i::len(workers)], "rerun_changed": rerun_changed, "threads": threads,
                     "log": log is not None}
                    for i, dev in enumerate(workers)]
        say(f"{len(mine)} jobs on {len(workers)} worker processes ({', '.join(workers)})")
        try:
            with ProcessPoolExecutor(len(workers), mp_context=mp.get_context("spawn")) as pool:
                for c in pool.map(_worker, payloads):
                    for k, v in c.items():
                        counts[k] += v
        except BrokenProcessPool:
            write_outputs(ctx, listed, plots=False)
            raise SparsekitError(f"a worker process died (killed, or out of memory?); the finished jobs are in "
                                 f"{outdir / 'results.csv'}: rerun the same command to resume the rest") from None
    rows = write_outputs(ctx, listed, plots=plots)
    return RunResult(outdir, t, rows, counts["done"], counts["skipped"], counts["failed"], counts["busy"])


def _union_jobs(table: Table, jobs: Sequence[Job], previous: dict[str, Any] | None) -> list[Job]:
    """``jobs`` plus the jobs earlier runs in the folder listed (same table), in grid order."""
    out = {(j.model, j.cell.row, j.cell.col, j.seed): j for j in jobs}
    for item in (previous or {}).get("job_ids", []) if str((previous or {}).get("table")) == table.number else []:
        try:
            model, row, col, seed = item
            key = (str(model), str(row), str(col), int(seed))
            if key not in out:
                out[key] = Job(table.number, key[0], table.cell(key[1], key[2]), key[3])
        except (KeyError, TypeError, ValueError):
            continue  # a cell this (scaled) table does not have: its folder stays, it is not listed
    models = list(dict.fromkeys(k[0] for k in out))
    index = {(c.row, c.col): i for i, c in enumerate(table.cells)}
    return sorted(out.values(), key=lambda j: (models.index(j.model), index[(j.cell.row, j.cell.col)], j.seed))


def _check_device(device: str) -> None:
    """A device string this machine has (``auto``, ``cpu``, ``cuda``, ``cuda:N`` with N below the GPU count)."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise SparsekitError(f"device {device!r} is not available here ({n} CUDA device(s)); use "
                                 f"{'cpu' if n == 0 else f'cuda:0..cuda:{n - 1}'}")


def _check_changed(ctx: _Context, jobs: Sequence[Job], rerun_changed: bool) -> None:
    """Refuse up front (before any training) when jobs already in DIR were run with other settings."""
    if rerun_changed:
        return
    changed = []
    for job in jobs:
        folder = ctx.out / job.folder
        saved = _read_json(folder / "config.json")
        if saved is None:
            continue
        cfg = job_config(ctx, job)
        if saved != cfg:
            changed.append(f"{job.cell_id} seed {job.seed} ({'; '.join(_diff(saved, cfg))[:300]})")
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise SparsekitError(f"{len(changed)} job(s) in {ctx.out} were run with other settings: "
                             f"{', '.join(changed[:3])}{more}; pass --rerun-changed to run them again (old results "
                             "move to superseded/) or use another --out")
