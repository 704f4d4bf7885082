"""sparsekit.plots and ``sparsekit plot``: files written, data plotted equal to the input, bad input named."""

from __future__ import annotations

import csv
import importlib
import json
import math
import sys
import warnings

import pytest
import torch
from cli_helpers import error_line, run
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("matplotlib")

import sparsekit  # noqa: E402
from sparsekit import plots  # noqa: E402
from sparsekit.errors import SparsekitError  # noqa: E402
from sparsekit.reproduce.paper_numbers import paper_numbers  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _line(fig, gid, axis=0):
    lines = [ln for ln in fig.axes[axis].get_lines() if ln.get_gid() == gid]
    assert len(lines) == 1, [ln.get_gid() for ln in fig.axes[axis].get_lines()]
    return [float(x) for x in lines[0].get_xdata()], [float(y) for y in lines[0].get_ydata()]


def _results(values):
    """results.csv-like rows: {(method, density): [value per seed]}."""
    return [{"table": "2", "cell": f"{m}@{d}", "model": "vgg16", "dataset": "cifar10", "method": m, "density": d,
             "seed": s, "metric": "test_acc", "value": v}
            for (m, d), vs in values.items() for s, v in enumerate(vs)]


def _tiny_ticket():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return model, sparsekit.prune(model, method="er-pyramidal", density=0.03, seed=3)


def test_the_plot_modules_import_without_matplotlib(monkeypatch):
    import sparsekit.cli.plot as cli_plot

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them now raises ImportError
    for module in (plots, cli_plot):
        importlib.reload(module)  # would fail if the module imported matplotlib at the top


# -- statistics -------------------------------------------------------------------------------------


def test_mean_ci95_is_students_t_interval():
    assert plots.mean_ci95([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.303 / math.sqrt(3)))
    assert plots.mean_ci95([5.0]) == (5.0, None)
    with pytest.raises(ValueError, match="at least one"):
        plots.mean_ci95([])
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 29, 30, 31, 45, 200):
        assert plots._t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3), df


# -- accuracy vs density ----------------------------------------------------------------------------


def test_accuracy_figure_plots_mean_and_ci_over_seeds_and_the_paper_points():
    values = {("er-balanced", 0.01): [89.0, 90.0, 91.0], ("er-balanced", 0.1): [93.0, 93.5, 92.5],
              ("er-erk", 0.01): [87.0, 88.0, 89.5]}
    paper = paper_numbers("2")
    fig = plots.accuracy_figure(_results(values), paper=[p for p in paper if p["method"] in ("er-balanced", "er-erk")])
    xs, ys = _line(fig, "ours:er-balanced")
    assert xs == [0.01, 0.1] and ys == pytest.approx([90.0, 93.0])
    assert _line(fig, "ours:er-erk") == ([0.01], pytest.approx([88.1666666]))
    px, py = _line(fig, "paper:er-balanced")
    assert px == [0.001, 0.005, 0.01, 0.1] and py == [68.7, 85.9, 89.3, 93.2]  # Table 2, sparsity 0.999 .. 0.9
    both = [p for p in paper_numbers("2") + paper_numbers("9") if p["method"] == "er-balanced"]
    fig9 = plots.accuracy_figure(_results(values), paper=both)
    # once per density: the cell with a ± wins (Table 9), else the first (0.999: neither prints one, Table 2 is first)
    assert _line(fig9, "paper:er-balanced")[1] == [68.7, 85.92, 89.31, 93.22]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test accuracy (%)"
    # the error bar of er-balanced at 0.01 spans mean ± t(0.975, 2) * sd / sqrt(3)
    half = plots.mean_ci95([89.0, 90.0, 91.0])[1]
    spans = [[(float(a[0]), float(a[1]), float(b[1])) for a, b in c.get_segments()]
             for c in ax.collections if c.get_gid() == "ci:ours:er-balanced"]
    half2 = plots.mean_ci95([93.0, 93.5, 92.5])[1]
    assert spans == [[(0.01, pytest.approx(90 - half), pytest.approx(90 + half)),
                      (0.1, pytest.approx(93 - half2), pytest.approx(93 + half2))]]
    assert [c.get_gid() for c in ax.collections if (c.get_gid() or "").startswith("ci:paper")] == []  # no ± in Table 2
    assert "ours: mean ± 95% CI (3 seeds)" in [t.get_text() for t in ax.get_legend().get_texts()]


@settings(max_examples=8, deadline=None)
@given(st.dictionaries(st.sampled_from([0.001, 0.005, 0.01, 0.1, 0.5, 1.0]),
                       st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=4), min_size=1, max_size=4))
def test_accuracy_figure_plots_the_mean_of_every_density(per_density):
    fig = plots.accuracy_figure(_results({("er-balanced", d): vs for d, vs in per_density.items()}))
    xs, ys = _line(fig, "ours:er-balanced")
    assert xs == sorted(per_density)
    assert ys == pytest.approx([sum(per_density[x]) / len(per_density[x]) for x in xs], abs=1e-9)


def test_accuracy_figure_names_what_it_leaves_out_and_refuses_bad_rows():
    rows = _results({("er-erk", 0.01): [88.0]}) + [
        {"model": "vgg16", "dataset": "cifar10", "method": "er-erk", "density": 0.1, "seed": 0, "metric": "test_acc",
         "value": None}]
    with pytest.warns(UserWarning, match="1 of 2 rows have no value yet"):
        fig = plots.accuracy_figure(rows)
    assert _line(fig, "ours:er-erk") == ([0.01], [88.0])
    with pytest.raises(SparsekitError, match="none of the 1 rows has a value"), pytest.warns(UserWarning):
        plots.accuracy_figure(rows[1:])
    with pytest.raises(SparsekitError, match="no rows with metric 'test_acc'"):
        plots.accuracy_figure([{**rows[0], "metric": "repairs"}])
    with pytest.raises(SparsekitError, match=r"density 0.0 of er-erk is outside \(0, 1\]"):
        plots.accuracy_figure([{**rows[0], "density": 0.0}])
    with pytest.raises(SparsekitError, match="density 1.5 of er-erk is outside"):
        plots.accuracy_figure([{**rows[0], "density": 1.5}])
    with pytest.warns(UserWarning, match="1 rows have no density"):
        fig = plots.accuracy_figure([rows[0], {**rows[0], "density": None, "method": "dense"}])
    assert [ln.get_gid() for ln in fig.axes[0].get_lines() if ln.get_gid()] == ["ours:er-erk"]
    with pytest.raises(SparsekitError, match="has no 'density'"):
        plots.accuracy_figure([{k: v for k, v in rows[0].items() if k != "density"}])
    with pytest.warns(UserWarning, match="1 rows repeat a"):
        fig = plots.accuracy_figure([rows[0], {**rows[0], "value": 80.0}, {**rows[0], "seed": 1, "value": 82.0}])
    assert _line(fig, "ours:er-erk") == ([0.01], [81.0])  # seed 0 counted once (its later value 80), seed 1: 82
    with pytest.warns(UserWarning, match="results.csv holds percent"):
        plots.accuracy_figure([{**rows[0], "value": 0.88}], paper=paper_numbers("2"))


# -- files ------------------------------------------------------------------------------------------


def test_files_are_png_or_svg_reproducible_and_atomic(tmp_path):
    rows = _results({("er-erk", 0.01): [88.0, 89.0], ("er-erk", 0.1): [92.0, 92.5]})
    png = plots.plot_accuracy_vs_density(rows, tmp_path / "acc.png", title="Table 2")
    svg = plots.plot_accuracy_vs_density(rows, tmp_path / "acc.svg")
    assert png.read_bytes().startswith(PNG) and png.stat().st_size > 10_000
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text and "<dc:date>" not in text
    first = svg.read_bytes(), png.read_bytes()
    plots.plot_accuracy_vs_density(rows, tmp_path / "acc.svg")
    plots.plot_accuracy_vs_density(rows, tmp_path / "acc.png", title="Table 2")
    assert (svg.read_bytes(), png.read_bytes()) == first  # same input, same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "acc.svg"]  # no temporary files left
    with pytest.raises(FileExistsError):
        plots.plot_accuracy_vs_density(rows, tmp_path / "acc.png", overwrite=False)
    with pytest.raises(ValueError, match=r"give a name ending in \.png or \.svg"):
        plots.plot_accuracy_vs_density(rows, tmp_path / "acc.pdf")
    assert png.read_bytes() == first[1]


def test_missing_matplotlib_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install sparsekit\[plot\]"):
        plots.history_figure([{"epoch": 0, "train_loss": 1.0, "train_acc": 0.5}])
    (tmp_path / "h.json").write_text(json.dumps([{"epoch": 0, "train_loss": 1.0, "train_acc": 0.5}]))
    assert "pip install sparsekit[plot]" in error_line(run("plot", tmp_path / "h.json"), 1)


# -- layer densities, tickets -----------------------------------------------------------------------


def test_layer_densities_figure_on_a_meta_model_plots_layer_densities():
    with torch.device("meta"):
        model = sparsekit.models.get_model("vgg16")
    methods = ["er-uniform", "er-erk", "er-balanced", "er-pyramidal"]
    fig = plots.layer_densities_figure(model, methods, 0.05)
    for m in methods:
        expected = sparsekit.layer_densities(model, m, 0.05)
        xs, ys = _line(fig, f"method:{m}")
        assert xs == list(range(len(expected))) and ys == pytest.approx(list(expected.values()))
    assert fig.axes[0].get_yscale() == "log"
    assert _line(plots.layer_densities_figure("vgg16", ["er-erk"], 0.05), "method:er-erk")[1] == _line(fig,
                                                                                                      "method:er-erk")[1]
    with pytest.raises(ValueError, match="at least one"):
        plots.layer_densities_figure(model, [], 0.05)


def test_ticket_figure_from_ticket_file_and_report_agree(tmp_path):
    _, ticket = _tiny_ticket()
    sparsekit.save_ticket(ticket, tmp_path / "t.safetensors")
    ticket.report().to_json(str(tmp_path / "report.json"))
    target = [r.target_density for r in ticket.layers]
    realised = [r.realised_density for r in ticket.layers]
    edges = [r.edges_added for r in ticket.layers]
    assert sum(edges) > 0  # the tiny ticket needs flow repair, so the bars are not all zero
    for source in (ticket, tmp_path / "t.safetensors", tmp_path / "report.json"):
        fig = plots.ticket_figure(source)
        assert _line(fig, "target") == (list(range(3)), pytest.approx(target))
        assert _line(fig, "realised")[1] == pytest.approx(realised)
        bars = [b.get_height() for b in fig.axes[1].patches]
        assert bars == edges
        assert f"{sum(edges):,} edges added" in fig.axes[1].get_title()
    out = plots.plot_ticket(tmp_path / "t.safetensors", tmp_path / "t.png")
    assert out.read_bytes().startswith(PNG)


def test_ticket_figure_says_when_nothing_was_repaired():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    fig = plots.ticket_figure(sparsekit.prune(model, method="er-erk", density=0.5, flow=None))
    assert fig.axes[1].get_title() == "no flow repair (flow=None)"
    assert [t.get_text() for t in fig.axes[1].texts] == ["no edges added in any layer"]
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[0].get_ylim()[0] == 0


def test_ticket_figure_refuses_bad_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(SparsekitError):
        plots.ticket_figure(bad)
    (tmp_path / "r.json").write_text('{"layers": [{"fqn": "a"}], "totals": {}}')
    with pytest.raises(SparsekitError, match="layer 0 of the report is malformed"):
        plots.ticket_figure(tmp_path / "r.json")
    with pytest.raises(TypeError, match="Ticket or the path"):
        plots.ticket_figure(42)  # type: ignore[arg-type]


# -- histories --------------------------------------------------------------------------------------


def _history(n=4):
    return [{"epoch": e, "train_loss": 2.0 / (e + 1), "train_acc": 0.5 + 0.1 * e, "lr": 0.1, "images_per_s": 1.0,
             "seconds": 1.0, "eval_loss": 2.5 / (e + 1), "eval_acc": 0.45 + 0.1 * e} for e in range(n)]


def test_history_figure_plots_losses_and_accuracies_per_epoch(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps(_history()))
    for source in (_history(), path):
        fig = plots.history_figure(source)
        assert _line(fig, "train_loss", 0) == ([1, 2, 3, 4], pytest.approx([2.0, 1.0, 2 / 3, 0.5]))
        assert _line(fig, "eval_acc", 1) == ([1, 2, 3, 4], pytest.approx([45.0, 55.0, 65.0, 75.0]))
        assert fig.axes[1].get_xlabel() == "epoch" and fig.axes[1].get_ylabel() == "accuracy (%)"
    no_eval = [{k: v for k, v in r.items() if not k.startswith("eval")} for r in _history()]
    assert [ln.get_gid() for ln in plots.history_figure(no_eval).axes[0].get_lines()] == ["train_loss"]


def test_history_from_the_engine(tmp_path):
    from sparsekit.train import History
    from sparsekit.train.engine import EpochStats

    h = History(EpochStats(epoch=e, train_loss=1.0 - 0.1 * e, train_acc=0.6, lr=0.1, images_per_s=1.0, seconds=1.0)
                for e in range(3))
    h.to_json(tmp_path / "history.json")
    assert _line(plots.history_figure(tmp_path / "history.json"), "train_loss") == ([1, 2, 3], [1.0, 0.9, 0.8])
    assert _line(plots.history_figure(h), "train_acc", 1)[1] == pytest.approx([60.0] * 3)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "not a training history"),
    ("[]", "no epochs"),
    ('[{"epoch": 0, "train_loss": "x", "train_acc": 0.5}]', "no number 'train_loss'"),
    ('[{"epoch": 0, "train_loss": 1.0, "train_acc": 0.5, "eval_acc": "high"}]', "non-number 'eval_acc'"),
])
def test_history_refuses_bad_files(tmp_path, content, message):
    (tmp_path / "h.json").write_text(content)
    with pytest.raises(SparsekitError, match=message):
        plots.history_figure(tmp_path / "h.json")


# -- results.csv ------------------------------------------------------------------------------------


def _write_results(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, plots.RESULTS_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in plots.RESULTS_COLUMNS})


def test_read_results_csv_types_columns(tmp_path):
    path = tmp_path / "results.csv"
    _write_results(path, [{"table": "2", "model": "vgg16", "dataset": "cifar10", "method": "er-erk", "density": "0.01",
                           "seed": "1", "metric": "test_acc", "value": "88.5", "paper_value": "87.8", "status": "done",
                           "epochs": "160", "wall_s": "12.5"},
                          {"table": "2", "model": "vgg16", "method": "er-erk", "density": "0.01", "seed": "2",
                           "metric": "test_acc", "status": "running"}])
    a, b = plots.read_results_csv(path)
    assert a["density"] == 0.01 and a["seed"] == 1 and a["value"] == 88.5 and a["epochs"] == 160
    assert a["source_density"] is None and a["paper_ci"] is None and a["table"] == "2" and a["status"] == "done"
    assert b["value"] is None and b["status"] == "running"


def test_read_results_csv_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "results.csv"
    _write_results(path, [{"table": "2", "density": "0.5"}])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert plots.read_results_csv(path)[0]["density"] == 0.5


def test_read_results_csv_refuses_bad_files(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("table,model,value\n2,vgg16,1\n")
    with pytest.raises(SparsekitError, match="columns .*'cell'.* are missing"):
        plots.read_results_csv(path)
    _write_results(path, [{"table": "2", "density": "one percent"}])
    with pytest.raises(SparsekitError, match="line 2: column 'density' is 'one percent', not a number"):
        plots.read_results_csv(path)
    _write_results(path, [{"table": "2", "seed": "1.5"}])
    with pytest.raises(SparsekitError, match="column 'seed' is '1.5', not an integer"):
        plots.read_results_csv(path)
    path.write_text(",".join(plots.RESULTS_COLUMNS) + "\n" + ",".join(["1"] * 18) + "\n")
    with pytest.raises(SparsekitError, match="more fields than the header's 17"):
        plots.read_results_csv(path)


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_plots_each_kind(tmp_path):
    _, ticket = _tiny_ticket()
    sparsekit.save_ticket(ticket, tmp_path / "t.safetensors")
    (tmp_path / "history.json").write_text(json.dumps(_history()))
    _write_results(tmp_path / "results.csv",
                   [{"table": "2", "cell": "c", "model": "vgg16", "dataset": "cifar10", "method": "er-balanced",
                     "density": d, "seed": s, "metric": "test_acc", "value": 90 + s} for d in (0.01, 0.1)
                    for s in range(2)])
    r = run("plot", tmp_path / "t.safetensors")
    assert r.exit_code == 0, r.output
    assert "per-layer densities and flow repairs" in r.output
    assert (tmp_path / "t.png").read_bytes().startswith(PNG)
    r = run("plot", tmp_path / "history.json", "-o", tmp_path / "curves.svg")
    assert r.exit_code == 0 and (tmp_path / "curves.svg").read_text().startswith("<?xml")
    r = run("plot", tmp_path / "results.csv")
    assert r.exit_code == 0 and "with the paper's points" in r.output, r.output
    assert (tmp_path / "results.png").stat().st_size > 10_000
    before = (tmp_path / "results.png").read_bytes()
    assert "exists; pass --force" in error_line(run("plot", tmp_path / "results.csv"), 1)
    assert (tmp_path / "results.png").read_bytes() == before
    assert run("plot", tmp_path / "results.csv", "--force").exit_code == 0
    assert "no rows of metric 'repairs'" in error_line(run("plot", tmp_path / "results.csv", "--metric", "repairs",
                                                           "--force"), 1)


def test_cli_plots_flow_repairs_of_tables_5_and_6(tmp_path):
    _write_results(tmp_path / "results.csv",
                   [{"table": "6", "cell": "c", "model": "vgg19", "dataset": "cifar100", "method": "er-erk",
                     "density": d, "seed": 0, "metric": "repairs", "value": v} for d, v in ((0.01, 0), (0.001, 31))])
    r = run("plot", tmp_path / "results.csv", "-o", tmp_path / "repairs.png")
    assert r.exit_code == 0 and "repairs vs density with the paper's points" in r.output, r.output
    paper = [p for p in paper_numbers("6") if p["method"] == "er-erk"]
    fig = plots.accuracy_figure(plots.read_results_csv(tmp_path / "results.csv"), paper=paper, metric="repairs")
    assert _line(fig, "paper:er-erk") == ([0.001, 0.01, 0.1, 0.2, 0.5], [30.33, 0.0, 0.0, 0.0, 0.0])
    assert _line(fig, "ours:er-erk") == ([0.001, 0.01], [31.0, 0.0])
    assert fig.axes[0].get_ylabel() == "edges added by flow repair"


def test_cli_paper_overlay_is_the_papers_table(tmp_path):
    from sparsekit.cli.plot import _paper_rows

    paper, unknown = _paper_rows([{"table": "Table 2"}, {"table": "9"}, {"table": "99"}, {"table": ""}])
    assert unknown == ["99"] and len(paper) == len(paper_numbers("2")) + len(paper_numbers("9"))


def test_cli_bad_inputs_are_one_line(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    assert "cannot tell what x.txt is" in error_line(run("plot", tmp_path / "x.txt"), 1)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    error_line(run("plot", tmp_path / "bad.safetensors"), 1)
    (tmp_path / "w.json").write_text('{"hello": 1}')
    assert "neither a training history" in error_line(run("plot", tmp_path / "w.json"), 1)
    (tmp_path / "c.json").write_text("[{")
    assert "not valid JSON" in error_line(run("plot", tmp_path / "c.json"), 1)
    assert "missing.json" in error_line(run("plot", tmp_path / "missing.json"), 1)
    (tmp_path / "h.json").write_text(json.dumps(_history()))
    assert ".png or .svg" in error_line(run("plot", tmp_path / "h.json", "-o", tmp_path / "h.jpg"), 1)
    assert not (tmp_path / "h.png").exists() and not (tmp_path / "x.png").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run("plot", "--help").exit_code == 0


def test_cli_overlays_the_papers_imp_er_points_on_er_imp_runs(tmp_path):
    """reproduce names the "IMP (ER)" cells er-imp, the paper files er-from: the CLI must not drop them."""
    _write_results(tmp_path / "results.csv",
                   [{"table": "2", "cell": "c", "model": "vgg16", "dataset": "cifar10", "method": "er-imp",
                     "density": 0.01, "seed": 0, "metric": "test_acc", "value": 80.0}])
    r = run("plot", tmp_path / "results.csv", "-o", tmp_path / "imp.png")
    assert r.exit_code == 0 and "with the paper's points" in r.output, r.output
