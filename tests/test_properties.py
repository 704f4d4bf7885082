"""Property tests over random layer shapes, groups, densities and flow modes."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flow import brute_dead
from torch import nn

import sparsekit
from sparsekit.layers import find_layers

LAYER_METHODS = [m for m in sparsekit.list_methods() if not sparsekit.get_method(m).inputs
           and m != "er-layerwise"]  # needs its densities option: test_densities


@st.composite
def layer(draw):
    kind = draw(st.sampled_from(["linear", "conv", "convT", "conv1d"]))
    g = draw(st.sampled_from([1, 2, 4]))
    cin = g * draw(st.integers(1, 6))
    cout = g * draw(st.integers(1, 6))
    if kind == "linear":
        return nn.Linear(cin * 4, cout * 4)
    if kind == "conv":
        return nn.Conv2d(cin, cout, draw(st.integers(1, 3)), groups=g)
    if kind == "convT":
        return nn.ConvTranspose2d(cin, cout, draw(st.integers(1, 3)), groups=g)
    return nn.Conv1d(cin, cout, draw(st.integers(1, 5)), groups=g)


@settings(max_examples=60, deadline=None)
@given(mods=st.lists(layer(), min_size=1, max_size=4), density=st.floats(0.002, 1.0),
       method=st.sampled_from(LAYER_METHODS), flow=st.sampled_from(["repair", "resample", None]),
       seed=st.integers(0, 2**64 - 1), exact=st.booleans())
def test_prune_properties(mods, density, method, flow, seed, exact):
    model = nn.ModuleList(mods)
    ticket = sparsekit.prune(model, method, density, seed=seed, flow=flow, exact=exact)
    layers = {L.fqn: L for L in find_layers(model)}
    for rec in ticket.layers:
        mask = ticket.mask(rec.fqn)
        w = model.get_parameter(rec.fqn)
        assert torch.equal(w != 0, mask & (w != 0))  # masked entries are zero
        assert int(mask.sum()) == rec.nonzeros
        drawn = rec.nonzeros - rec.edges_added
        m, p = rec.numel, rec.target_density
        if exact:
            assert drawn == min(m, round(p * m))
        else:
            assert abs(drawn - p * m) <= 5 * math.sqrt(m * p * (1 - p)) + 1
        if flow is not None:
            assert brute_dead(layers[rec.fqn], mask) == (0, 0)
    sparsekit.finalize(model)
    again = sparsekit.prune(model, method, density, seed=seed, flow=flow, exact=exact)
    assert all(torch.equal(again.masks[k], v) for k, v in ticket.masks.items())
