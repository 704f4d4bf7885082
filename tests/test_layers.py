"""Layer discovery: axes of every supported module type, tied weights, custom types."""

from __future__ import annotations

import pytest
import torch
from models import Conv1D, GPT2Block, TiedLM
from torch import nn

import sparsekit
from sparsekit.layers import find_layers


def by_name(model, **kw):
    return {L.fqn: L for L in find_layers(model, **kw)}


def test_linear_conv_grid():
    m = nn.Sequential(nn.Linear(5, 7), nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8),
                      nn.Conv3d(2, 3, (1, 2, 3)))
    L = by_name(m)
    assert L["0.weight"].grid() == (1, 7, 5, 1)
    assert L["1.weight"].grid() == (2, 4, 2, 9)
    assert L["2.weight"].grid() == (8, 1, 1, 9)  # depthwise
    assert L["3.weight"].grid() == (1, 3, 2, 6)


def test_conv_transpose_axes_are_swapped():
    m = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.ConvTranspose1d(5, 7, 2))
    L = by_name(m)
    w = L["0.weight"]
    assert w.shape == (4, 3, 3, 3) and (w.layout.out_axis, w.layout.in_axis) == (1, 0)
    assert w.grid() == (2, 3, 2, 9)  # out/g = 3 rows, in/g = 2 cols
    assert L["1.weight"].grid() == (1, 7, 5, 2)


def test_grid_view_matches_brute_force():
    """as_grid and flat_index agree with an explicit definition of rows/cols for each type."""
    conv_t = nn.ConvTranspose2d(4, 6, 3, groups=2)
    conv = nn.Conv2d(6, 4, 3, groups=2)
    for mod in (conv_t, conv):
        (layer,) = find_layers(mod)
        t = torch.arange(layer.numel).view(layer.shape)
        grid = layer.as_grid(t)
        G, R, C, K = layer.grid()
        for g in range(G):
            for r in range(R):
                for c in range(C):
                    if isinstance(mod, nn.ConvTranspose2d):  # weight[in, out/g, kh, kw]
                        expect = t[g * C + c, r].flatten()
                    else:  # weight[out, in/g, kh, kw]
                        expect = t[g * R + r, c].flatten()
                    assert torch.equal(grid[g, r, c], expect)
                    k = torch.arange(K)
                    idx = layer.flat_index(torch.tensor(g), torch.tensor(r), torch.tensor(c), k)
                    assert torch.equal(t.view(-1)[idx], expect)


def test_multihead_attention():
    m = nn.MultiheadAttention(16, 4)
    L = by_name(m)
    assert set(L) == {"in_proj_weight", "out_proj.weight"}
    assert L["in_proj_weight"].grid() == (1, 48, 16, 1)
    m2 = nn.MultiheadAttention(16, 4, kdim=8, vdim=12)
    assert set(by_name(m2)) == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"}
    assert by_name(m2)["k_proj_weight"].grid() == (1, 16, 8, 1)


def test_hf_conv1d_duck_typed():
    L = by_name(nn.Sequential(Conv1D(12, 4)))
    assert L["0.weight"].shape == (4, 12)
    assert L["0.weight"].grid() == (1, 12, 4, 1)  # rows = out (nf), cols = in (nx)
    assert len(by_name(GPT2Block())) == 4


def test_embeddings_excluded_by_default_and_tied_weights():
    model = TiedLM()
    # a Parameter shared by an embedding and a projection is an embedding: excluded by default
    assert set(by_name(model)) == {"hidden.weight"}
    # selecting the embedding selects the tie: named by its first fqn, alias kept, reported as Embedding
    L = by_name(model, filter_fn=lambda m, n: True)
    assert set(L) == {"emb.weight", "hidden.weight"}
    assert L["emb.weight"].aliases == ("head.weight",)
    assert L["emb.weight"].module_type == "Embedding"
    # a filter selecting only the head does not select the embedding's weight
    assert set(by_name(model, filter_fn=lambda m, n: not isinstance(m, nn.Embedding))) == {"hidden.weight"}
    untied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    assert set(by_name(untied)) == {"1.weight"}
    assert set(by_name(untied, filter_fn=lambda m, n: True)) == {"0.weight", "1.weight"}
    assert by_name(untied, filter_fn=lambda m, n: True)["0.weight"].grid() == (1, 4, 10, 1)


def test_tied_weight_gets_one_mask():
    model = TiedLM()
    ticket = sparsekit.prune(model, "er-uniform", 0.3, seed=1, filter_fn=lambda m, n: True)
    # module order of the first selecting module (the embedding), named by the first fqn
    assert [r.fqn for r in ticket.layers] == ["emb.weight", "hidden.weight"]
    assert model.head.weight is model.emb.weight
    mask = ticket.masks["emb.weight"]
    assert torch.equal(model.head.weight != 0, mask)


class Bilinearish(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 5, 7))


def test_unknown_module_type_errors_and_registration():
    model = nn.Sequential(nn.Linear(7, 7), Bilinearish())
    with pytest.raises(sparsekit.UnsupportedLayerError, match="register_layer_type"):
        find_layers(model)
    # excluded via filter_fn: fine
    assert set(by_name(model, filter_fn=lambda m, n: not isinstance(m, Bilinearish))) == {"0.weight"}
    sparsekit.register_layer_type(Bilinearish, ("weight",), out_axis=0, in_axis=2)
    try:
        L = by_name(model)["1.weight"]
        assert L.grid() == (1, 3, 7, 5)
    finally:
        from sparsekit.layers import _REGISTRY

        _REGISTRY.pop(Bilinearish)


def test_meta_parameters():
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 10))
    layers = find_layers(m)
    assert [L.numel for L in layers] == [1_000_000, 10_000]
    ticket = sparsekit.prune(m, "er-erk", 0.05)
    assert ticket.report().totals["realised_density"] == pytest.approx(0.05, rel=0.05)
    assert not sparsekit.is_pruned(m)  # meta: reported, not attached


def test_torchscript_module():
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.ReLU(), nn.Linear(8, 2)))
    L = by_name(scripted)
    assert set(L) == {"0.weight", "2.weight"}
    assert L["0.weight"].grid() == (1, 8, 3, 9)
