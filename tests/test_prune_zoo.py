"""Every registered method over a zoo of models: realised densities within binomial tolerance."""

from __future__ import annotations

import math

import pytest
import torch
from models import zoo

import sparsekit
from sparsekit.flow import dead_units
from sparsekit.layers import find_layers

ZOO = zoo()
METHODS = [m for m in sparsekit.list_methods() if not sparsekit.get_method(m).inputs
           and m != "er-layerwise"]  # data methods: test_pruners; er-layerwise (needs densities=): test_densities


@pytest.fixture(autouse=True)
def _unprune_zoo():
    """The zoo is shared between tests: remove masks after each (masks do not depend on weights)."""
    yield
    for model in ZOO.values():
        sparsekit.finalize(model)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(ZOO))
def test_realised_density_within_binomial_tolerance(name, method):
    model = ZOO[name]
    density = 0.05
    ticket = sparsekit.prune(model, method, density, seed=11)
    expect = actual = var = 0.0
    total = 0
    layers = {L.fqn: L for L in find_layers(model)}
    for rec in ticket.layers:
        m, p = rec.numel, rec.target_density
        drawn = rec.nonzeros - rec.edges_added  # Bernoulli draw before repair
        tol = 5 * math.sqrt(m * p * (1 - p)) + 1
        assert abs(drawn - p * m) <= tol, (rec.fqn, drawn, p * m, tol)
        # the realised count is what the mask holds, repairs included
        assert int(ticket.mask(rec.fqn).sum()) == rec.nonzeros
        if p < 1:
            rows, cols = dead_units(layers[rec.fqn], ticket.mask(rec.fqn))
            assert rows.numel() == 0 and cols.numel() == 0
        expect += p * m
        actual += drawn
        var += m * p * (1 - p)
        total += m
    assert abs(actual - expect) <= 5 * math.sqrt(var) + 1
    totals = ticket.report().totals
    assert totals["params"] == total
    assert totals["expected_density"] == pytest.approx(density, rel=1e-6) or method == "er-balanced"
    assert totals["realised_density"] == pytest.approx(sum(r.nonzeros for r in ticket.layers) / total)
    # tied parameters are counted once
    assert total == sum(L.numel for L in find_layers(model))


@pytest.mark.parametrize("name", ["resnet18", "mlp", "transformer", "conv1d"])
def test_same_seed_same_masks_other_seed_other_masks(name):
    model = ZOO[name]
    a = sparsekit.prune(model, "er-erk", 0.1, seed=1)
    sparsekit.finalize(model)
    b = sparsekit.prune(model, "er-erk", 0.1, seed=1)
    sparsekit.finalize(model)
    c = sparsekit.prune(model, "er-erk", 0.1, seed=2)
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert all(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks if a.masks[k].numel() > 64)


def test_exact_counts():
    model = ZOO["resnet18"]
    t = sparsekit.prune(model, "er-balanced", 0.01, exact=True, flow=None)
    for rec in t.layers:
        assert rec.nonzeros == round(rec.target_density * rec.numel)


def test_masks_are_a_function_of_fqn_shape_density_not_of_the_model():
    """The same layer in a different model gets the same mask for the same density."""
    a = torch.nn.Sequential(torch.nn.Linear(30, 40))
    b = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 40))
    ta = sparsekit.prune(a, "er-uniform", 0.2, seed=4, flow=None)
    tb = sparsekit.prune(b, "er-uniform", 0.2, seed=4, flow=None)
    assert torch.equal(ta.masks["0.weight"], tb.masks["0.weight"])
