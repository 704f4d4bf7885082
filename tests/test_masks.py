"""CompactMask: both storage forms round-trip and zero exactly the pruned entries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.masks import CompactMask


@pytest.mark.parametrize("p", [0.0, 0.01, 0.12, 0.2, 0.9, 1.0])
def test_roundtrip_and_zeroing(p):
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 5, 3, 3, generator=gen) < p
    cm = CompactMask.from_bool(mask.clone(), consume=True)
    assert cm.nnz == int(mask.sum())
    assert (cm.kept is not None) == (8 * cm.nnz < mask.numel())
    assert torch.equal(cm.bool(), mask)
    t = torch.randn(6, 5, 3, 3, generator=gen)
    expect = t * mask
    assert torch.equal(cm.zero_pruned_(t.clone()), expect)
    cl = t.clone().to(memory_format=torch.channels_last)  # non-contiguous in C order
    assert torch.equal(cm.zero_pruned_(cl), expect)
    assert cm.nbytes <= mask.numel()


def test_compact_masks_are_small_in_a_ticket():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 1000))
    t = sparsekit.prune(model, "er-uniform", 0.01)
    total = sum(m.numel for m in t.compact_masks.values())
    assert sum(m.nbytes for m in t.compact_masks.values()) < 0.1 * total  # vs 1 byte/weight for bool


class DenseNoise(torch.optim.Optimizer):
    """Not elementwise in the sense of sparsekit: moves every entry, even with zero gradient."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                p.add_(0.01)


def test_unknown_optimizer_is_masked_after_every_step():
    model = nn.Sequential(nn.Linear(20, 20))
    t = sparsekit.prune(model, "er-uniform", 0.2)
    opt = DenseNoise(model.parameters())
    for _ in range(3):
        opt.step()
        w = model[0].weight
        assert torch.all(w[~t.masks["0.weight"]] == 0)


def test_subclass_of_sgd_is_not_trusted_blindly():
    class MySGD(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            super().step(closure)
            for g in self.param_groups:
                for p in g["params"]:
                    p.add_(1.0)

    model = nn.Sequential(nn.Linear(8, 8))
    t = sparsekit.prune(model, "er-uniform", 0.3)
    opt = MySGD(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
    assert torch.all(model[0].weight[~t.masks["0.weight"]] == 0)


def test_flat_nonzero_matches_nonzero():
    from sparsekit.masks import flat_nonzero

    gen = torch.Generator().manual_seed(1)
    for n in (0, 1, 7, 8, 9, 1001, 4096):
        for p in (0.0, 0.01, 0.5, 1.0):
            m = torch.rand(n, generator=gen) < p
            assert torch.equal(flat_nonzero(m), m.nonzero().squeeze(1))
            if n > 2:
                assert torch.equal(flat_nonzero(m[1:]), m[1:].nonzero().squeeze(1))  # unaligned view
