"""Flow preservation (App. A.1): no dead rows or columns after repair, counts agree, determinism."""

from __future__ import annotations

import pytest
import torch
from models import deconv_decoder, small_cnn
from torch import nn

import sparsekit
from sparsekit.flow import dead_units
from sparsekit.layers import find_layers


def brute_dead(layer, mask):
    """Dead rows/cols by definition, looping over the grid (independent of dead_units)."""
    G, R, C, K = layer.grid()
    grid = layer.as_grid(mask)
    rows = sum(1 for g in range(G) for r in range(R) if not bool(grid[g, r].any()))
    cols = sum(1 for g in range(G) for c in range(C) if not bool(grid[g, :, c].any()))
    return rows, cols


def models():
    return {"mlp": nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10)),
            "cnn": small_cnn(), "deconv": deconv_decoder()}


@pytest.mark.parametrize("name", ["mlp", "cnn", "deconv"])
@pytest.mark.parametrize("flow", ["repair", "resample"])
def test_no_dead_units_after_repair(name, flow):
    model = models()[name]
    ticket = sparsekit.prune(model, "er-uniform", 0.005, seed=3, flow=flow)
    layers = {L.fqn: L for L in find_layers(model)}
    total_added = 0
    for rec in ticket.layers:
        mask = ticket.mask(rec.fqn)
        assert brute_dead(layers[rec.fqn], mask) == (0, 0)
        assert int(mask.sum()) == rec.nonzeros
        total_added += rec.edges_added
        if flow == "repair":  # random addition: one edge per repaired unit at most
            assert rec.edges_added <= rec.rows_repaired + rec.cols_repaired
            assert rec.edges_added >= rec.rows_repaired
    assert total_added > 0  # at this density something needed repair
    assert ticket.report().totals["edges_added"] == total_added


@pytest.mark.parametrize("name", ["mlp", "cnn", "deconv"])
def test_flow_none_leaves_dead_units(name):
    model = models()[name]
    ticket = sparsekit.prune(model, "er-uniform", 0.005, seed=3, flow=None)
    layers = {L.fqn: L for L in find_layers(model)}
    dead = sum(sum(brute_dead(layers[r.fqn], ticket.mask(r.fqn))) for r in ticket.layers)
    assert dead > 0
    assert all(r.edges_added == 0 for r in ticket.layers)


def test_report_counts_match_masks_before_and_after():
    model = nn.Sequential(nn.Linear(500, 400), nn.Linear(400, 3))
    plain = sparsekit.prune(nn.Sequential(nn.Linear(500, 400), nn.Linear(400, 3)), "er-uniform", 0.002,
                            seed=9, flow=None)
    fixed = sparsekit.prune(model, "er-uniform", 0.002, seed=9, flow="repair")
    layers = {L.fqn: L for L in find_layers(model)}
    for a, b in zip(plain.layers, fixed.layers, strict=True):
        rows, cols = dead_units(layers[a.fqn], plain.mask(a.fqn))
        assert b.rows_repaired == rows.shape[0]
        # repair only adds edges, on top of the same Bernoulli draw
        assert torch.all(fixed.mask(a.fqn) >= plain.mask(a.fqn))
        assert b.nonzeros - a.nonzeros == b.edges_added
        assert b.cols_repaired <= cols.shape[0]  # row edges may revive columns first


def test_repair_is_deterministic_and_seed_dependent():
    def masks(seed, flow):
        t = sparsekit.prune(small_cnn(), "er-pyramidal", 0.01, seed=seed, flow=flow)
        return {k: v.clone() for k, v in t.masks.items()}

    for flow in ("repair", "resample"):
        a, b, c = masks(5, flow), masks(5, flow), masks(6, flow)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resample_preserves_density_better_than_nothing():
    # rejection sampling of a dead row draws Bernoulli(p) again: on a layer with many dead rows
    # the repaired rows hold about max(1, p * entries) edges each, never zero
    model = nn.Sequential(nn.Linear(64, 2000))
    t = sparsekit.prune(model, "er-uniform", 0.01, seed=0, flow="resample")
    rec = t.layers[0]
    assert rec.rows_repaired > 0 and rec.fallbacks == 0
    assert rec.edges_added >= rec.rows_repaired


def test_grouped_conv_groups_repaired_within_group():
    conv = nn.Conv2d(64, 64, 3, groups=16)
    t = sparsekit.prune(nn.Sequential(conv), "er-uniform", 0.01, seed=2)
    (layer,) = find_layers(nn.Sequential(conv))
    assert brute_dead(layer, t.mask("0.weight")) == (0, 0)
    assert t.layers[0].rows_repaired > 0


def test_num_corrected_counts_layer_direction_pairs_not_edges():
    """Tables 5-6 quantity: (layer, direction) pairs repaired (the authors' num_corrected), not edges."""
    model = nn.Sequential(nn.Linear(500, 400), nn.Linear(400, 3))
    ticket = sparsekit.prune(model, "er-uniform", 0.002, seed=9, flow="repair")
    totals = ticket.report().totals
    pairs = [(r.rows_repaired > 0, r.cols_repaired > 0) for r in ticket.layers]
    assert totals["num_corrected"] == sum(a + b for a, b in pairs) == totals["pairs_repaired"]
    assert 1 <= totals["num_corrected"] <= 2 * len(ticket.layers)
    assert totals["edges_added"] > totals["num_corrected"]  # many units per pair: the two counts differ
    assert f"{totals['num_corrected']} corrected" in str(ticket.report())
    clean = sparsekit.prune(nn.Sequential(nn.Linear(50, 40)), "er-uniform", 0.5, seed=0).report().totals
    assert clean["num_corrected"] == clean["edges_added"] == 0
