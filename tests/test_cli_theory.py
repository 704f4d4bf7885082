"""``sparsekit theory``: widths, lower-bound, subset-sum."""

from __future__ import annotations

import json
import math

import pytest
from cli_helpers import error_line, run

from sparsekit import theory as T


def test_widths_prints_the_plan():
    result = run("theory", "widths", "--target", "784,300,100,10", "--density", "0.1", "--delta", "0.1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Theorem 2.5 (log bound)" in out
    assert "source widths: 156016,52200,9800,10 (overparametrisation q = 199,174,98,1)" in out
    assert "existence probability (analytic): 0.907578" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isdigit()}
    assert rows["1"][1:5] == ["0.1", "174", "300", "52200"]
    assert rows["3"][-1] == "0.967739"


def test_widths_json_matches_the_library_and_simulates():
    result = run("theory", "widths", "--target", "6,5,4,3", "--density", "0.5,0.6,0.7", "--delta", "0.2",
                 "--bound", "exact", "--simulate", "200", "--seed", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    plan = T.weak_ticket_widths((6, 5, 4, 3), (0.5, 0.6, 0.7), 0.2, bound="exact")
    assert data["copies"] == list(plan.copies)
    assert data["source_widths"] == list(plan.source_widths)
    assert data["existence_probability"] == pytest.approx(plan.probability)
    sim = data["simulation"]
    expected = T.simulate_existence(plan.target, plan.source_widths, plan.densities, 200, 4)
    assert sim["successes"] == expected.successes and sim["trials"] == 200
    assert abs(sim["probability"] - plan.probability) <= 4 * sim["stderr"]


def test_widths_simulation_in_text():
    result = run("theory", "widths", "--target", "6,5,4,3", "--density", "0.5", "--simulate", "100")
    assert result.exit_code == 0, result.output
    assert "existence probability (simulated, 100 trials, seed 0):" in result.stdout
    assert "failures per layer: l=1:" in result.stdout
    assert "simulating 100 source networks" in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--target", "784,x", "--density", "0.1"], "comma-separated integers"),
    (["--target", "784", "--density", "0.1"], "at least two positive widths"),
    (["--target", "784,10", "--density", "abc"], "expected a number"),
    (["--target", "784,10", "--density", "0.1", "--delta", "1.5"], "--delta"),
])
def test_widths_usage_errors(args, needle):
    result = run("theory", "widths", *args)
    assert result.exit_code == 1  # usage errors: one line, exit status 1
    assert needle in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--target", "784,10", "--density", "0.1,0.2"], "L = 1 numbers"),
    (["--target", "784,10", "--density", "1.5"], "must be a number in (0, 1]"),
])
def test_widths_value_errors_are_one_line(args, needle):
    line = error_line(run("theory", "widths", *args), 1)
    assert needle in line


def test_lower_bound():
    result = run("theory", "lower-bound", "--density", "0.5", "--d", "4", "--delta", "0.5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["theorem_2_7"] == pytest.approx(math.log(1 / (1 - 0.5 ** 0.25)) / math.log(2))
    assert data["minimal_path_width"] == 6
    assert data["path_probability"] >= 0.5 > data["path_probability_one_less"]
    text = run("theory", "lower-bound", "--density", "0.1", "--d", "784").stdout
    assert "Theorem 2.7: widths n_S,1 < 84.6128" in text
    assert "from n_S,1 = 881 on" in text


def test_subset_sum():
    result = run("theory", "subset-sum", "--density", "0.5", "--eps", "0.01", "--delta", "0.1", "-C", "2",
                 "--check", "50", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n"] == 14
    check = T.subset_sum_check(14, 0.5, 0.01, trials=50)
    assert data["check"]["success_rate"] == check.success_rate
    text = run("theory", "subset-sum", "--density", "0.5", "--eps", "0.01").stdout
    assert "Lemma 2.1: n >= 7 (C = 1)" in text


def test_subset_sum_too_large_for_the_exact_check():
    line = error_line(run("theory", "subset-sum", "--density", "0.01", "--eps", "0.01", "--check", "10"), 1)
    assert "at most 44" in line


def test_widths_of_a_model_spec():
    result = run("theory", "widths", "--model", "sparsekit:vgg16", "--density", "0.1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    from sparsekit.models import get_model

    plan = T.weak_ticket_widths(get_model("vgg16", num_classes=10), 0.1, 0.1)
    assert data["theorem"] == "2.6" and data["copies"] == list(plan.copies)
    assert data["target"]["kernels"][:13] == [9] * 13 and data["target"]["kernels"][13] == 1
    line = error_line(run("theory", "widths", "--model", "sparsekit:resnet18", "--density", "0.1"), 1)
    assert "chain of layers" in line and "residual" in line


def test_widths_needs_exactly_one_target():
    for args in ([], ["--target", "4,2", "--model", "sparsekit:mlp"]):
        result = run("theory", "widths", "--density", "0.1", *args)
        assert result.exit_code == 1 and "--target D,N1,...,NL or as --model SPEC" in result.stderr
