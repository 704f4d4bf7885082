"""Masks survive the ways users copy and convert models: ``copy.deepcopy``, ``torch.save(model)``,
``module.to()`` with tensor swapping, ``AveragedModel`` (all lost the masks silently or failed before)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import sparsekit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def _pruned() -> tuple[nn.Module, object]:
    m = _model()
    t = sparsekit.prune(m, "er-balanced", 0.1, seed=3)
    return m, t


def _train(m: nn.Module, steps: int = 4, opt_cls=torch.optim.AdamW) -> None:
    dtype = next(m.parameters()).dtype
    opt = opt_cls(m.parameters(), lr=1e-2)
    for i in range(steps):
        opt.zero_grad()
        g = torch.Generator().manual_seed(i)
        m(torch.randn(8, 20, generator=g, dtype=dtype)).pow(2).mean().backward()
        opt.step()


def _assert_masks_hold(m: nn.Module, ticket) -> None:
    params = dict(m.named_parameters())
    for fqn, mask in ticket.masks.items():
        w = params[fqn]
        assert not bool((w.detach()[~mask] != 0).any()), f"{fqn}: pruned weights moved"
        assert bool((w.detach()[mask] != 0).all()), f"{fqn}: kept weights are zero"


def test_deepcopy_carries_masks_and_ticket():
    m, t = _pruned()
    c = copy.deepcopy(m)
    assert sparsekit.is_pruned(c)
    assert sparsekit.ticket_of(c) is t
    _train(c)
    _assert_masks_hold(c, t)
    # the copy trained, the original did not move
    assert not torch.equal(c[0].weight, m[0].weight)
    _train(m, 2, torch.optim.SGD)
    _assert_masks_hold(m, t)


def test_deepcopy_load_state_dict_and_finalize_are_per_copy():
    m, t = _pruned()
    c = copy.deepcopy(m)
    c.load_state_dict(_model().state_dict())  # dense weights: the copy's masks are re-applied
    _assert_masks_hold(c, t)
    sparsekit.finalize(c)
    assert not sparsekit.is_pruned(c)
    assert sparsekit.ticket_of(c) is None
    assert all("_sparsekit" not in k for mod in c.modules() for k in mod.__dict__)
    assert all(len(mod._load_state_dict_post_hooks) == 0 for mod in c.modules())
    assert sparsekit.is_pruned(m) and sparsekit.ticket_of(m) is t  # the original keeps its masks
    _train(m)
    _assert_masks_hold(m, t)


def test_torch_save_whole_model_round_trip():
    m, t = _pruned()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert sparsekit.is_pruned(loaded)
    lt = sparsekit.ticket_of(loaded)
    assert lt is not None and lt.masks == t.masks and lt.seed == t.seed
    _train(loaded)
    _assert_masks_hold(loaded, t)


def test_swap_tensors_conversion_keeps_masks():
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m, t = _pruned()
        m = m.double()
        _train(m)
        _assert_masks_hold(m, t)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def test_averaged_model_and_tied_copy():
    m, t = _pruned()
    ema = torch.optim.swa_utils.AveragedModel(m, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    for _ in range(3):
        _train(m, 1)
        ema.update_parameters(m)
    _assert_masks_hold(ema.module, t)
    # tied weights: one mask, one Parameter, two owners, in the copy too
    tied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False))
    tied[2].weight = tied[0].weight
    tt = sparsekit.prune(tied, "er-uniform", 0.5, seed=1, flow=None)
    c = copy.deepcopy(tied)
    assert c[0].weight is c[2].weight
    opt = torch.optim.SGD(c.parameters(), lr=0.1)
    c(torch.randn(4, 8)).sum().backward()
    opt.step()
    mask = next(iter(tt.masks.values()))
    assert not bool((c[0].weight.detach()[~mask] != 0).any())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_then_rewire(how):
    m, t = _pruned()
    if how == "deepcopy":
        c = copy.deepcopy(m)
    else:
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        c = torch.load(buf, weights_only=False)
    opt = torch.optim.SGD(c.parameters(), lr=0.1)
    rw = sparsekit.Rewirer(c, opt, method="set", total_steps=4, update_every=1, seed=0)
    for i in range(3):
        opt.zero_grad()
        c(torch.randn(8, 20, generator=torch.Generator().manual_seed(i))).pow(2).mean().backward()
        opt.step()
        rw.step()
    for fqn, w, mask in sparsekit.masked_parameters(c):
        assert not bool((w.detach()[~mask] != 0).any()), fqn


def test_pruned_frozen_then_unfrozen_masks_gradients():
    m = _model()
    m.requires_grad_(False)
    t = sparsekit.prune(m, "er-balanced", 0.1, seed=0)
    m.requires_grad_(True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for i in range(3):
        opt.zero_grad()
        m(torch.randn(8, 20, generator=torch.Generator().manual_seed(i))).pow(2).mean().backward()
        if i > 0:  # the first step's pre-hook installs the gradient hook (and masks that step's gradients)
            for fqn, mask in t.masks.items():
                assert not bool((m.get_parameter(fqn).grad[~mask] != 0).any()), fqn
        opt.step()
    _assert_masks_hold(m, t)


def test_tied_weights_load_state_dict_assign():
    tied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False))
    tied[2].weight = tied[0].weight
    t = sparsekit.prune(tied, "er-uniform", 0.5, seed=1, flow=None)
    mask = next(iter(t.masks.values()))
    sd = {"0.weight": torch.randn(8, 8), "2.weight": torch.randn(8, 8)}
    tied.load_state_dict(sd, assign=True)  # torch's assign gives each module its own new Parameter
    opt = torch.optim.SGD(tied.parameters(), lr=0.1, momentum=0.9)
    for i in range(2):
        opt.zero_grad()
        tied(torch.randn(4, 8, generator=torch.Generator().manual_seed(i))).pow(2).sum().backward()
        for w in (tied[0].weight, tied[2].weight):
            assert not bool((w.grad[~mask] != 0).any())
        opt.step()
    for w in (tied[0].weight, tied[2].weight):
        assert not bool((w.detach()[~mask] != 0).any())


def test_a_copy_whose_masked_weight_was_replaced_is_named_once_and_others_still_adopted():
    m, t = _pruned()
    bad = copy.deepcopy(m)
    good = copy.deepcopy(m)
    bad[2].weight = nn.Parameter(torch.randn(3, 64))  # surgery on a copy that still carries masks
    with pytest.raises(sparsekit.SparsekitError, match=r"lost its masked weight 2\.weight.*finalize"):
        sparsekit.is_pruned(good)
    assert sparsekit.is_pruned(good)  # said once; the good copy was adopted all the same
    _train(good)
    _assert_masks_hold(good, t)


def test_saving_weights_of_a_ticket_shared_by_copies_asks_which_model(tmp_path):
    """After ``best = deepcopy(model)`` both models share one ticket: saving its weights without model=
    must not silently take the original's weights for the copy's ticket (nor the reverse)."""
    m, _t = _pruned()
    best = copy.deepcopy(m)
    with torch.no_grad():
        m.get_parameter(sparsekit.ticket_of(m).layers[0].fqn).mul_(2.0)  # the original trains on
    with pytest.raises(ValueError, match="pass model="):
        sparsekit.save_ticket(sparsekit.ticket_of(best), tmp_path / "best.safetensors", weights="kept")
    sparsekit.save_ticket(sparsekit.ticket_of(best), tmp_path / "best.safetensors", weights="kept", model=best)
    fresh = copy.deepcopy(best)
    sparsekit.finalize(fresh)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    sparsekit.apply_ticket(fresh, tmp_path / "best.safetensors")
    for r in sparsekit.ticket_of(best).layers:  # the copy's weights, not the original's (doubled) ones
        assert torch.equal(fresh.get_parameter(r.fqn), best.get_parameter(r.fqn)), r.fqn
