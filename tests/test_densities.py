"""Layerwise densities (paper §3) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
from sparsekit.densities import pyramidal_p1


def three_layers() -> nn.Module:
    # m = 200, 216, 5000 (total 5416)
    return nn.Sequential(nn.Linear(10, 20), nn.Conv2d(3, 8, 3), nn.Linear(100, 50))


NAMES = ["0.weight", "1.weight", "2.weight"]
SIZES = np.array([200, 216, 5000])


def dens(method, density, **kw):
    d = sparsekit.layer_densities(three_layers(), method, density, **kw)
    assert list(d) == NAMES
    return np.array([d[n] for n in NAMES])


def test_uniform():
    assert np.allclose(dens("er-uniform", 0.1), 0.1)


def test_balanced_by_hand():
    # x = 0.1 * 5416 / 3 = 180.5333 nonzeros per layer
    assert np.allclose(dens("er-balanced", 0.1), [180.53333 / 200, 180.53333 / 216, 180.53333 / 5000], rtol=1e-5)


def test_balanced_capped_paper_rule():
    # x = 0.2 * 5416 / 3 = 361.0667 > 200, 216 -> capped at 1; C gets 361.0667 / 5000 = 0.0722133
    d = dens("er-balanced", 0.2, redistribute=False)
    assert np.allclose(d, [1.0, 1.0, 0.0722133], rtol=1e-5)
    assert (d * SIZES).sum() / SIZES.sum() == pytest.approx(0.14347, rel=1e-4)  # below target


def test_balanced_redistributed():
    # freed budget 1083.2 - 416 = 667.2 goes to C: 667.2 / 5000 = 0.13344
    d = dens("er-balanced", 0.2)
    assert np.allclose(d, [1.0, 1.0, 0.13344], rtol=1e-6)
    assert (d * SIZES).sum() / SIZES.sum() == pytest.approx(0.2, rel=1e-12)


def test_erk_by_hand():
    # raw = 30/200, 17/216, 150/5000; divisor = 30 + 17 + 150 = 197; eps = 541.6 / 197
    eps = 541.6 / 197
    assert np.allclose(dens("er-erk", 0.1), [eps * 0.15, eps * 17 / 216, eps * 0.03], rtol=1e-9)


def test_erk_capping_by_hand():
    # p = 0.5: A overflows (2.06) -> dense; then B overflows (1.18) -> dense; C = 2292 / 5000
    assert np.allclose(dens("er-erk", 0.5), [1.0, 1.0, 0.4584], rtol=1e-9)


def test_pyramidal_matches_polynomial_roots():
    d = dens("er-pyramidal", 0.1)
    # 5000 q^3 + 216 q^2 + 200 q - 541.6 = 0 (the paper solves this with numpy)
    roots = np.roots([5000, 216, 200, -541.6])
    q = [r.real for r in roots if abs(r.imag) < 1e-12 and 0 < r.real < 1]
    assert len(q) == 1
    assert np.allclose(d, [q[0], q[0] ** 2, q[0] ** 3], rtol=1e-9)


def test_dense_layers_count_towards_budget():
    d = sparsekit.layer_densities(three_layers(), "er-uniform", 0.5, dense=["0"])
    assert d["0.weight"] == 1.0
    assert (np.array(list(d.values())) * SIZES).sum() / SIZES.sum() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="too low"):
        sparsekit.layer_densities(three_layers(), "er-uniform", 0.01, dense=["2.weight"])
    with pytest.raises(ValueError, match="matches no prunable layer"):
        sparsekit.layer_densities(three_layers(), "er-uniform", 0.5, dense=["nope"])


def test_density_one_is_dense_everywhere():
    for m in sparsekit.list_methods():
        assert np.all(dens(m, 1.0) == 1.0)


def test_meta_device_model():
    with torch.device("meta"):
        model = three_layers()
    assert np.allclose(list(sparsekit.layer_densities(model, "erk", 0.1).values()), dens("er-erk", 0.1))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=1, max_size=8),
       p=st.floats(0.001, 1.0), method=st.sampled_from(["er-uniform", "er-erk", "er-balanced", "er-pyramidal"]))
def test_global_budget_met(sizes, p, method):
    model = nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in sizes])
    d = sparsekit.layer_densities(model, method, p)
    m = np.array([a * b for a, b in sizes], dtype=float)
    v = np.array(list(d.values()))
    assert np.all((v > 0) & (v <= 1))
    realised = (v * m).sum() / m.sum()
    # every scheme meets the budget exactly (ERK can only exceed it when every layer is dense)
    assert realised == pytest.approx(p, rel=1e-7, abs=1e-12) or np.all(v == 1.0)


def test_pyramidal_p1_properties():
    assert pyramidal_p1([100], 0.3) == pytest.approx(0.3)
    assert pyramidal_p1([10, 10], 1.0) == 1.0
    q = pyramidal_p1([1000] * 50, 0.01)
    assert 0 < q < 1 and sum(1000 * q ** (i + 1) for i in range(50)) == pytest.approx(0.01 * 50000, rel=1e-9)


def test_layerwise_takes_the_given_densities():
    # list in module order or mapping by fqn; the global density defaults to sum p_l m_l / sum m_l
    given = [0.5, 1.0, 0.02]
    implied = (0.5 * 200 + 216 + 0.02 * 5000) / 5416
    assert np.allclose(list(sparsekit.layer_densities(three_layers(), "er-layerwise", densities=given).values()), given)
    assert np.allclose(dens("layerwise", implied, densities=dict(zip(NAMES, given, strict=True))), given)
    model = three_layers()
    ticket = sparsekit.prune(model, sparsekit.Method("er-layerwise", {"densities": given}), seed=3)
    assert ticket.density == pytest.approx(implied)
    assert [r.target_density for r in ticket.layers] == given


def test_layerwise_ticket_file_round_trip(tmp_path):
    model = three_layers()
    ticket = sparsekit.prune(model, "er-layerwise", densities=[0.3, 0.6, 0.1], seed=9)
    path = sparsekit.save_ticket(ticket, tmp_path / "t.safetensors")
    fresh = three_layers()
    again = sparsekit.apply_ticket(fresh, path)
    for name in NAMES:
        assert torch.equal(again.masks[name], ticket.masks[name])


@pytest.mark.parametrize(("kw", "match"), [
    ({}, "needs the option densities"),
    ({"densities": [0.1, 0.2]}, "has 2 values but the model has 3"),
    ({"densities": {"0.weight": 0.1}}, "missing: 1.weight, 2.weight"),
    ({"densities": {"0.weight": 0.1, "1.weight": 0.1, "2.weight": 0.1, "x": 0.5}}, "unknown: x"),
    ({"densities": [0.1, 0.0, 0.2]}, r"densities\['1.weight'\] must be in \(0, 1\]"),
    ({"densities": 0.1}, "needs the option densities"),
])
def test_layerwise_errors(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sparsekit.layer_densities(three_layers(), "er-layerwise", **kw)


def test_layerwise_explicit_density_must_agree():
    with pytest.raises(ValueError, match="imply a global density of"):
        sparsekit.layer_densities(three_layers(), "er-layerwise", 0.5, densities=[0.1, 0.1, 0.1])
    assert np.allclose(dens("er-layerwise", 0.1, densities=[0.1, 0.1, 0.1]), 0.1)
