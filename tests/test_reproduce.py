"""sparsekit.reproduce: the paper's tables as grids, the resumable runner, results.csv and summary.md.

The paper's labels below are typed from papers/erdos-renyi-lottery.txt, independently of the grid code.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import error_line
from cli_helpers import run as cli

import sparsekit
from sparsekit.reproduce import RESULT_COLUMNS, expand, get_table, list_tables, run
from sparsekit.reproduce import runner as runner_mod
from sparsekit.reproduce.summary import format_entry, mean_ci, t_quantile_975

ROOT = Path(__file__).resolve().parents[1]

# --- the paper's tables, typed from the text -------------------------------------------------------------
SEVEN = ["Pyramidal", "Balanced", "Uniform", "ERK", "Snip (ER)", "Synflow (ER)", "IMP (ER)"]
FIVE = ["Balanced (ours)", "Pyramidal (ours)", "ERK", "Uniform", "ER Snip"]
FLOW = ["Uniform", "ERK", "ER Snip", "Balanced (ours)", "Pyramidal (ours)"]
LABEL = {"Pyramidal": "er-pyramidal", "Pyramidal (ours)": "er-pyramidal", "Balanced": "er-balanced",
         "Balanced (ours)": "er-balanced", "Uniform": "er-uniform", "ERK": "er-erk", "Snip (ER)": "er-snip",
         "ER Snip": "er-snip", "Synflow (ER)": "er-synflow", "IMP (ER)": "er-imp"}
# number -> (model, dataset, rows, cols)
PAPER = {
    "1": ("resnet18", "cifar10", ["Test Acc."],
          ["0 → 0.9", "0.5 → 0.9", "0.7 → 0.9", "0.5 → 0.95", "0.8 → 0.95", "0.5 → 0.99"]),
    "2": ("vgg16", "cifar10", ["0.9", "0.99", "0.995", "0.999"], SEVEN),
    "3": ("vgg19", "cifar100", ["0.5", "0.8", "0.9", "0.99"], SEVEN),
    "4": ("vgg16", "cifar10", ["ERK", "Balanced", "Pyramidal"],
          ["0.99 Original", "0.99 Rewired", "0.995 Original", "0.995 Rewired", "0.999 Original", "0.999 Rewired"]),
    "5": ("resnet50", "cifar100", FLOW, ["0.5", "0.8", "0.9", "0.99", "0.999"]),
    "6": ("vgg19", "cifar100", FLOW, ["0.5", "0.8", "0.9", "0.99", "0.999"]),
    "7": ("resnet18", "cifar10", ["0.9", "0.99", "0.995", "0.999"], SEVEN),
    "8": ("resnet50", "cifar100", ["0.5", "0.8", "0.9", "0.99"], SEVEN[:5]),
    "9": ("vgg16", "cifar10", ["0.9", "0.99", "0.995", "0.999"], SEVEN),
    "10": ("vgg19", "cifar100", ["0.5", "0.8", "0.9", "0.99"], SEVEN),
    "11": ("resnet18", "cifar10", ["Test Acc."],
           ["0.5 → 0.8", "0.5 → 0.9", "0.7 → 0.9", "0.5 → 0.95", "0.8 → 0.95", "0.5 → 0.99"]),
    "12": ("resnet18", "cifar10", ["Test Acc."], ["0 → 0.8", "0 → 0.9", "0 → 0.95", "0 → 0.99"]),
    "13": ("vgg16", "cifar10", ["Test Acc."], ["0.5 → 0.8", "0.5 → 0.9", "0.5 → 0.95", "0.5 → 0.99"]),
    "14": ("vgg16", "cifar10", ["Test Acc."], ["0 → 0.8", "0 → 0.9", "0 → 0.95", "0 → 0.99"]),
    "15": ("resnet110", "cifar100", ["Test Acc."], ["0 → 0.9", "0.5 → 0.9", "0.7 → 0.9"]),
    "16": ("resnet110", "cifar100", FIVE, ["0.5", "0.8", "0.9", "0.95"]),
    "17": ("resnet110", "cifar100", ["Test Acc."], ["0.5", "0.9"]),
    "18": ("vgg19", "tiny-imagenet", FIVE, ["0.5", "0.8", "0.9", "0.99"]),
    "19": ("resnet20", "tiny-imagenet", FIVE, ["0.5", "0.8", "0.9", "0.99"]),
    "20": ("vgg16", "cifar10", ["ERK", "Balanced", "Pyramidal"],
           ["0.99 Original", "0.99 Rewired", "0.995 Original", "0.995 Rewired", "0.999 Original", "0.999 Rewired"]),
    "21": ("vgg16", "cifar10", ["Balanced (ours)", "Pyramidal (ours)", "ERK"], ["0.5 → 0.99", "0.9 → 0.99",
                                                                                  "0.95 → 0.99"]),
}
RUNS = {"15": 1, "17": 1}


def _expected(number: str, row: str, col: str) -> tuple[str, float, float | None]:
    """(method, final density, source density) of a paper entry, derived from its labels."""
    if "→" in col:
        a, b = (float(x) for x in col.split("→"))
        method = "edge-popup" if row == "Test Acc." else "rigl"
        return method, 1 - b, 1 - a
    if number in ("4", "20"):
        s, kind = col.split()
        return ("rigl" if kind == "Rewired" else LABEL[row]), 1 - float(s), None
    if number == "17":
        return "imp", 1 - float(col), None
    if row in LABEL:
        return LABEL[row], 1 - float(col), None
    return LABEL[col], 1 - float(row), None


def col_start(col: str) -> float:
    return float(col.split("→")[0])


def test_every_experimental_table_is_registered():
    assert [t.number for t in list_tables()] == [str(i) for i in range(1, 22)]


@pytest.mark.parametrize("number", list(PAPER))
def test_grid_expands_to_the_papers_cells(number):
    model, dataset, rows, cols = PAPER[number]
    t = get_table(number)
    assert (t.model, t.dataset) == (model, dataset)
    assert list(t.rows) == rows and list(t.cols) == cols
    assert len(t.cells) == len(rows) * len(cols)  # every entry of the paper's grid, once
    assert {(c.row, c.col) for c in t.cells} == {(r, c) for r in rows for c in cols}
    for c in t.cells:
        method, density, source = _expected(number, c.row, c.col)
        assert c.method == method, (c.row, c.col)
        if method == "rigl":
            assert c.init == LABEL[c.row]  # the ER scheme the rewiring starts from
        if method == "edge-popup":
            assert c.init == ("dense" if col_start(c.col) == 0 else "er-uniform")
        assert math.isclose(c.density, density, abs_tol=1e-9)
        assert (c.source_density is None) == (source is None)
        if source is not None:
            assert math.isclose(c.source_density, source, abs_tol=1e-9)
    jobs = expand(t)
    assert len(jobs) == len(rows) * len(cols) * RUNS.get(number, 3)
    assert len({(j.cell_id, j.seed) for j in jobs}) == len(jobs)  # stable, unique ids


def test_trainers_and_recipes_follow_the_paper():
    assert {c.trainer for c in get_table(2).cells} == {"weak"}
    assert get_table(2).recipe("weak").epochs == 160 and get_table(2).recipe("weak").batch_size == 128
    assert get_table(5).metric == get_table(6).metric == "repairs"
    strong = get_table(1).recipe("strong")
    assert (strong.levels, strong.epochs_per_level, strong.source_method) == (5, 100, "er-uniform")
    assert get_table(17).recipe("imp").optimizer == "adam" and get_table(17).recipe("imp").imp_rounds == 25
    assert get_table(4).recipe("rewire").update_every == 100
    assert {c.trainer for c in get_table(4).cells} == {"weak", "rewire"}


def test_table_lookup_and_filters_fail_clearly():
    assert get_table("A7") is get_table(7) is get_table("table7")
    with pytest.raises(sparsekit.SparsekitError, match="unknown table '22'.*1, 2, 3"):
        get_table(22)
    with pytest.raises(sparsekit.SparsekitError, match="no density 0.3.*0.1, 0.01"):
        expand(2, densities=[0.3])
    with pytest.raises(sparsekit.SparsekitError, match="no method 'er-foo'"):
        expand(2, methods=["er-foo"])
    with pytest.raises(ValueError, match="seeds"):
        expand(2, seeds=0)


def test_student_t_interval():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=2e-3)  # Cornish-Fisher beyond the table
    m, ci, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and ci == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert mean_ci([5.0]) == (5.0, None, 1)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        t_quantile_975(0)
    text = format_entry([90.0, 92.0], {"value": 93.2, "ci": 0.28}, "test_acc", paper_known=True)
    assert text.startswith("91.00 ± 12.71 (paper 93.20 ± 0.28, diff -2.20) n=2")


def test_paper_matching_by_density_method_and_start():
    """Rows as sparsekit.reproduce.paper_numbers gives them: rigl rows name their ER start in ``init``."""
    t = get_table(4)
    row = {"density": 0.01, "source_density": None, "metric": "test_acc", "ci": None}
    paper = [{**row, "method": "er-erk", "init": "", "value": 87.8},
             {**row, "method": "rigl", "init": "er-erk", "value": 90.8},
             {**row, "method": "rigl", "init": "er-balanced", "value": 91.4},
             {**row, "method": "er-balanced", "init": "", "value": 89.3}]
    orig, rew = t.cell("ERK", "0.99 Original"), t.cell("ERK", "0.99 Rewired")
    assert (rew.method, rew.init, rew.cell_id) == ("rigl", "er-erk", "rigl-er-erk-d0.01")
    assert runner_mod.match_paper(t, orig, paper)["value"] == 87.8
    assert runner_mod.match_paper(t, rew, paper)["value"] == 90.8
    assert runner_mod.match_paper(t, t.cell("Balanced", "0.99 Rewired"), paper)["value"] == 91.4
    assert runner_mod.match_paper(t, t.cell("ERK", "0.995 Original"), paper) is None  # no such density
    # a rewired number that does not say which ER scheme it started from is never taken for the ERK cell,
    # and the original network's number is never taken for the rewired one
    vague = [paper[0], {**paper[1], "init": ""}]
    assert runner_mod.match_paper(t, rew, vague) is None
    assert runner_mod.match_paper(t, orig, vague)["value"] == 87.8
    assert runner_mod.match_paper(t, orig, [paper[0], {**paper[0], "value": 1.0}]) is None  # duplicates
    # strong tickets: the ER start (or "dense") is part of the method; one cell per (source, final) density
    t1 = get_table(1)
    ep = {"method": "edge-popup", "density": 0.1, "metric": "test_acc"}
    rows = [{**ep, "init": "dense", "source_density": 1.0, "value": 87.9},
            {**ep, "init": "er-uniform", "source_density": 0.5, "value": 88.1}]
    assert runner_mod.match_paper(t1, t1.cell("Test Acc.", "0 → 0.9"), rows)["value"] == 87.9
    assert runner_mod.match_paper(t1, t1.cell("Test Acc.", "0.5 → 0.9"), rows)["value"] == 88.1
    assert runner_mod.match_paper(t1, t1.cell("Test Acc.", "0.7 → 0.9"), rows) is None
    imp = {"method": "er-from", "init": "", "density": 0.1, "source_density": None, "value": 90.05,
           "metric": "test_acc"}
    t2 = get_table(2)
    assert runner_mod.match_paper(t2, t2.cell("0.9", "IMP (ER)"), [imp])["value"] == 90.05
    assert runner_mod.match_paper(t2, t2.cell("0.9", "ERK"), [imp]) is None


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_tiny_table2_end_to_end_skip_and_changed_settings(tmp_path, monkeypatch):
    out = tmp_path / "t2"
    kw = dict(out=out, scale="tiny", methods=["er-balanced", "er-erk"], densities=[0.1], seeds=2, epochs=2)
    res = run(2, **kw)
    assert res.ran == 4 and res.complete
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert tuple(header[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    rows = _rows(out / "results.csv")
    assert [(r["cell"], r["seed"]) for r in rows] == [("vgg16-er-balanced-d0.1", "0"), ("vgg16-er-balanced-d0.1", "1"),
                                                      ("vgg16-er-erk-d0.1", "0"), ("vgg16-er-erk-d0.1", "1")]
    for r in rows:
        assert r["status"] == "done" and r["dataset"] == "digits" and r["metric"] == "test_acc"
        assert 0 <= float(r["value"]) <= 100 and r["epochs"] == "2"
        hist = json.loads((out / r["history"]).read_text())
        assert len(hist) == 2 and float(r["value"]) == pytest.approx(100 * hist[-1]["eval_acc"])
        ticket = sparsekit.load_ticket(out / r["ticket"])
        assert ticket.method == r["method"] and ticket.seed == int(r["seed"])
    summary = (out / "summary.md").read_text()
    assert "| Sparsity | Pyramidal | Balanced | Uniform | ERK | Snip (ER) | Synflow (ER) | IMP (ER) |" in summary
    assert "scale: **tiny**" in summary
    # the paper's Table 2 numbers sit next to ours (sparsekit/reproduce/paper/table02.csv)
    from sparsekit.reproduce.paper_numbers import paper_numbers

    want = {r["method"]: r["value"] for r in paper_numbers("2") if r["density"] == pytest.approx(0.1)}
    for r in rows:
        assert float(r["paper_value"]) == pytest.approx(want[r["method"]])
    vals = [float(r["value"]) for r in rows if r["method"] == "er-balanced"]
    m, ci, _ = mean_ci(vals)
    p = want["er-balanced"]
    assert f"{m:.2f} ± {ci:.2f} (paper {p:.2f}, diff {m - p:+.2f}) n=2" in summary
    # rerun: everything is finished, nothing is trained again, results.csv unchanged
    before = (out / "results.csv").read_text()
    res2 = run(2, **kw)
    assert (res2.ran, res2.skipped) == (0, 4) and (out / "results.csv").read_text() == before
    # a changed recipe is refused by name, or rerun on request with the old results kept
    with pytest.raises(sparsekit.SparsekitError, match=r"vgg16-er-balanced-d0.1 seed 0 .*recipe.*--rerun-changed"):
        run(2, **{**kw, "epochs": 3})
    with pytest.raises(sparsekit.SparsekitError, match="holds a run of Table 2; give another --out for Table 9"):
        run(9, **kw)
    res3 = run(2, **{**kw, "epochs": 3, "methods": ["er-erk"], "seeds": 1}, rerun_changed=True)
    assert res3.ran == 1 and len(list((out / "superseded").iterdir())) == 1
    # results.csv still lists the jobs of the earlier, wider run: those with other settings as "stale"
    rows3 = _rows(out / "results.csv")
    assert [(r["cell"], r["seed"], r["status"]) for r in rows3] == [
        ("vgg16-er-balanced-d0.1", "0", "stale"), ("vgg16-er-balanced-d0.1", "1", "stale"),
        ("vgg16-er-erk-d0.1", "0", "done"), ("vgg16-er-erk-d0.1", "1", "stale")]


def test_tiny_flow_table_counts_match_prune(tmp_path):
    """Table 5 at tiny scale: each value is the ticket's num_corrected, regenerated bit-exactly from the seed."""
    out = tmp_path / "t5"
    run(5, out=out, scale="tiny", densities=[0.2], methods=["er-uniform", "er-pyramidal"], seeds=2)
    rows = _rows(out / "results.csv")
    assert len(rows) == 4 and all(r["metric"] == "repairs" and r["status"] == "done" for r in rows)
    from sparsekit.reproduce._models import build_model

    for r in rows:
        model = build_model("resnet50", "tiny", (1, 8, 8), 10)
        t = sparsekit.prune(model, r["method"], 0.2, seed=int(r["seed"]))
        assert float(r["value"]) == t.report().totals["num_corrected"]
        saved = sparsekit.load_ticket(out / r["ticket"])
        assert all(torch.equal(saved.mask(k), t.mask(k)) for k in t.compact_masks)
    assert "| Method | 0.5 | 0.8 | 0.9 | 0.99 | 0.999 |" in (out / "summary.md").read_text()


@pytest.mark.parametrize("number,kw", [(13, {"densities": [0.2]}), (21, {"methods": ["rigl"], "densities": [0.01]}),
                                       (17, {"densities": [0.5]})])
def test_tiny_strong_rewire_and_imp_cells_run(tmp_path, number, kw):
    res = run(number, out=tmp_path / "o", scale="tiny", seeds=1, epochs=1, plots=False, **kw)
    assert res.complete and res.ran >= 1
    for r in res.rows:
        assert 0 <= r["value"] <= 100 and (tmp_path / "o" / r["ticket"]).is_file()
    # a job killed after its last checkpoint but before result.json: the rerun resumes it to the same value
    (tmp_path / "o" / res.rows[0]["history"]).parent.joinpath("result.json").unlink()
    again = run(number, out=tmp_path / "o", scale="tiny", seeds=1, epochs=1, plots=False, **kw)
    assert again.ran == 1 and [r["value"] for r in again.rows] == [r["value"] for r in res.rows]


def test_busy_cell_is_left_to_the_process_holding_its_lock(tmp_path):
    out = tmp_path / "b"
    jobs = expand(5, scale="tiny", densities=[0.5], methods=["er-erk"], seeds=2)
    lock = runner_mod._Lock(out / jobs[0].folder / ".lock")
    assert lock.acquire(blocking=False)
    try:
        res = run(5, out=out, scale="tiny", densities=[0.5], methods=["er-erk"], seeds=2, plots=False)
        assert (res.ran, res.busy) == (1, 1)
        assert [r["status"] for r in res.rows] == ["running", "done"]
        assert not res.complete
    finally:
        lock.release()


_KILL_SCRIPT = """
import sys, torch
from sparsekit.reproduce import run
run(2, out=sys.argv[1], scale="tiny", methods=["er-balanced"], densities=[0.1], seeds=1, epochs=int(sys.argv[2]),
    plots=False)
"""


def test_killed_cell_resumes_to_the_same_results(tmp_path):
    epochs = 14
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(killed), str(epochs)], env=env)
    ck = killed / "cells/vgg16-er-balanced-d0.1/seed-0/checkpoints/checkpoint.pt"
    deadline = time.time() + 60
    while not ck.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ck.exists(), "the cell never wrote a checkpoint"
    assert not (killed / "cells/vgg16-er-balanced-d0.1/seed-0/result.json").exists(), "killed too late"
    res = run(2, out=killed, scale="tiny", methods=["er-balanced"], densities=[0.1], seeds=1, epochs=epochs,
              plots=False)
    assert res.ran == 1
    clean = tmp_path / "clean"
    run(2, out=clean, scale="tiny", methods=["er-balanced"], densities=[0.1], seeds=1, epochs=epochs, plots=False)
    assert _without_wall(_rows(killed / "results.csv")) == _without_wall(_rows(clean / "results.csv"))
    h1 = json.loads((killed / "cells/vgg16-er-balanced-d0.1/seed-0/history.json").read_text())
    h2 = json.loads((clean / "cells/vgg16-er-balanced-d0.1/seed-0/history.json").read_text())
    assert [h["eval_acc"] for h in h1] == [h["eval_acc"] for h in h2]
    assert [h["train_loss"] for h in h1] == [h["train_loss"] for h in h2]


def test_cli_reproduce_runs_lists_and_reports_mistakes_in_one_line(tmp_path):
    out = tmp_path / "c"
    r = cli("reproduce", "5", "--scale", "tiny", "--densities", "0.5", "--methods", "er-balanced", "--seeds", "1",
            "--out", out, "--no-plots")
    assert r.exit_code == 0, r.output
    assert "Table 5: 1/1 cell-seeds done" in r.output and (out / "results.csv").is_file()
    r = cli("reproduce", "--list")
    assert r.exit_code == 0 and "ESTIMATE" in r.output and "VGG16 on CIFAR-10" in r.output
    assert "no GPU" in r.output  # the flow tables train nothing
    assert "unknown table '22'" in error_line(cli("reproduce", "22", "--out", out), 1)
    assert "needs data" in error_line(cli("reproduce", "2", "--out", out), 1)
    assert "--any-data" in error_line(cli("reproduce", "2", "--data", "digits:flat=false", "--out", out), 1)
    assert "--densities: 'x'" in error_line(cli("reproduce", "2", "--scale", "tiny", "--densities", "x", "--out",
                                                out), 1)
    assert "give --out" in error_line(cli("reproduce", "2", "--scale", "tiny"), 1)
    assert "not a device name" in error_line(cli("reproduce", "5", "--scale", "tiny", "--device", "gpu0", "--out",
                                                 out), 1)
    if torch.cuda.device_count() < 8:
        assert "'cuda:7' is not available here" in error_line(cli("reproduce", "5", "--scale", "tiny", "--devices",
                                                                   "cpu,cuda:7", "--out", out), 1)
    assert "give a TABLE" in error_line(cli("reproduce", "--out", out), 1)


def test_parallel_workers_and_torchrun_ranks_give_the_sequential_results(tmp_path, monkeypatch):
    kw = dict(scale="tiny", densities=[0.5], methods=["er-erk", "er-pyramidal"], seeds=1, plots=False)
    run(5, out=tmp_path / "seq", **kw)
    expected = _without_wall(_rows(tmp_path / "seq" / "results.csv"))
    res = run(5, out=tmp_path / "par", jobs=2, **kw)
    assert res.ran == 2 and _without_wall(_rows(tmp_path / "par" / "results.csv")) == expected
    # torchrun: rank r of w takes jobs r::w and trains alone; the last rank to finish writes the full files
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    res0 = run(5, out=tmp_path / "tr", **kw)
    assert res0.ran == 1 and [r["status"] for r in res0.rows] == ["done", "pending"]
    monkeypatch.setenv("RANK", "1")
    res1 = run(5, out=tmp_path / "tr", **kw)
    assert res1.ran == 1 and res1.complete
    assert os.environ["WORLD_SIZE"] == "2"  # restored after the engine ran single-process
    with pytest.raises(ValueError, match="under torchrun.*leave out --jobs"):
        run(5, out=tmp_path / "tr", jobs=2, **kw)
    assert _without_wall(_rows(tmp_path / "tr" / "results.csv")) == expected


def test_paper_numbers_and_plots_are_wired_in_when_present(tmp_path, monkeypatch):
    """With part B's modules installed the summary compares with the paper and plots/ is drawn; here both are
    stand-ins that record their calls (the real ones live in sparsekit/plots.py and reproduce/paper_numbers.py)."""
    import types

    assert sparsekit.reproduce.run is run  # lazily imported attribute
    calls: list[str] = []
    paper = types.ModuleType("sparsekit.reproduce.paper_numbers")
    paper.paper_numbers = lambda table: [  # type: ignore[attr-defined]
        {"table": table, "model": "vgg16", "dataset": "cifar10", "method": "er-balanced", "density": 0.1,
         "source_density": None, "metric": "test_acc", "value": 93.22, "ci": 0.28, "ref": "Table 9, balanced, 0.9"}]
    plots = types.ModuleType("sparsekit.plots")

    def writer(name):
        def fn(*args, **kwargs):
            calls.append(name)
            out = Path(args[1] if name != "layer_densities" else args[3])
            out.write_bytes(b"\x89PNG fake")
            if name == "history":
                raise RuntimeError("boom")  # a failing plot is reported, the results stay
            return out
        return fn

    for name in ("accuracy_vs_density", "layer_densities", "ticket", "history"):
        setattr(plots, f"plot_{name}", writer(name))
    monkeypatch.setitem(sys.modules, "sparsekit.reproduce.paper_numbers", paper)
    monkeypatch.setitem(sys.modules, "sparsekit.plots", plots)
    monkeypatch.setattr(sparsekit, "plots", plots, raising=False)  # an earlier import may have bound the real one
    monkeypatch.setattr(sparsekit.reproduce, "paper_numbers", paper, raising=False)
    out = tmp_path / "p"
    res = run(2, out=out, scale="tiny", methods=["er-balanced"], densities=[0.1], seeds=2, epochs=1)
    rows = _rows(out / "results.csv")
    assert all(r["paper_value"] == "93.22" and r["paper_ci"] == "0.28" for r in rows)
    summary = (out / "summary.md").read_text()
    m = sum(r["value"] for r in res.rows) / 2
    assert f"(paper 93.22 ± 0.28, diff {m - 93.22:+.2f}) n=2" in summary
    assert {"accuracy_vs_density", "layer_densities", "history"} <= set(calls), summary
    assert (out / "plots" / "table2_accuracy.png").is_file()
    assert "plots: history vgg16-er-balanced-d0.1 failed (RuntimeError: boom)" in summary


def test_a_failing_cell_is_named_and_retried(tmp_path, monkeypatch):
    real = runner_mod._execute

    def flaky(ctx, job, folder):
        if job.seed == 1:
            raise RuntimeError("out of memory")
        return real(ctx, job, folder)

    monkeypatch.setattr(runner_mod, "_execute", flaky)
    out = tmp_path / "f"
    args = ["reproduce", "5", "--scale", "tiny", "--densities", "0.5", "--methods", "er-erk", "--out", out,
            "--no-plots"]
    line = error_line(cli(*args), 1)
    assert "1 cell-seed(s) failed (resnet50-er-erk-d0.5 seed 1)" in line
    rows = _rows(out / "results.csv")
    assert [r["status"] for r in rows] == ["done", "failed"] and "out of memory" in rows[1]["error"]
    assert "resnet50-er-erk-d0.5 seed 1: RuntimeError: out of memory" in (out / "summary.md").read_text()
    monkeypatch.setattr(runner_mod, "_execute", real)
    r = cli(*args)
    assert r.exit_code == 0 and "(1 run now, 1 already finished" in r.output


def test_a_table_without_paper_numbers_says_why(tmp_path, monkeypatch):
    import types

    paper = types.ModuleType("sparsekit.reproduce.paper_numbers")

    def missing(table):
        raise sparsekit.SparsekitError(f"Table {table} has only its caption in the paper text")

    paper.paper_numbers = missing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sparsekit.reproduce.paper_numbers", paper)
    monkeypatch.setattr(sparsekit.reproduce, "paper_numbers", paper, raising=False)
    out = tmp_path / "m"
    run(5, out=out, scale="tiny", densities=[0.5], methods=["er-erk"], seeds=1, plots=False)
    summary = (out / "summary.md").read_text()
    assert "paper: no numbers for this table (Table 5 has only its caption in the paper text)" in summary
    assert "0 (paper –) n=1" in summary
    assert _rows(out / "results.csv")[0]["paper_value"] == ""


def test_an_unreadable_run_record_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "t2"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    with pytest.raises(sparsekit.SparsekitError, match="not a readable run record"):
        run(2, out=out, scale="tiny", methods=["er-erk"], densities=[0.1], seeds=1, epochs=1)
    assert (out / "run.json").read_text() == "{not json"
