"""Enforcement: masked weights stay exactly zero through training; state_dict keys unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from models import TiedLM, small_cnn, transformer
from torch import nn

import sparsekit
from sparsekit.errors import SparsekitError


def train(model, opt, steps=5, shape=(8, 3, 12, 12), classes=10):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(*shape, generator=gen)
        y = torch.randint(0, classes, (shape[0],), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_masked_zero(model, ticket):
    for fqn, mask in ticket.masks.items():
        w = model.get_parameter(fqn)
        assert torch.all(w[~mask] == 0), fqn
    return True


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
], ids=["sgd", "adamw", "adam", "rmsprop"])
def test_training_keeps_masked_weights_zero(make_opt):
    model = small_cnn()
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = sparsekit.prune(model, "er-balanced", 0.2, seed=0)
    opt = make_opt(model.parameters())
    train(model, opt)
    assert list(model.state_dict()) == keys
    assert_masked_zero(model, ticket)
    # kept weights did train
    fqn = next(iter(ticket.masks))
    w, m = model.get_parameter(fqn), ticket.masks[fqn]
    assert not torch.equal(w[m], before[fqn][m])
    # no extra parameters or buffers
    assert len(list(model.buffers())) == len(list(small_cnn().buffers()))


def test_optimizer_state_from_before_pruning_cannot_revive_weights():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, steps=2)  # momentum buffers are dense now
    ticket = sparsekit.prune(model, "er-uniform", 0.1)
    train(model, opt, steps=3)
    assert_masked_zero(model, ticket)


def test_manual_sgd_loop_without_optimizer():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ticket = sparsekit.prune(model, "er-uniform", 0.3)
    x = torch.randn(16, 20)
    for _ in range(3):
        loss = model(x).pow(2).mean()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    assert_masked_zero(model, ticket)


def test_forward_uses_masked_weights_and_finalize_leaves_plain_module():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    dense = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    dense.load_state_dict(model.state_dict())
    ticket = sparsekit.prune(model, "er-uniform", 0.3)
    with torch.no_grad():
        for fqn, mask in ticket.masks.items():
            dense.get_parameter(fqn).mul_(mask)
    x = torch.randn(5, 10)
    assert torch.equal(model(x), dense(x))
    assert sparsekit.is_pruned(model)
    sparsekit.finalize(model)
    assert not sparsekit.is_pruned(model)
    for p in model.parameters():
        assert not hasattr(p, "_sparsekit_mask")
        assert not getattr(p, "_post_accumulate_grad_hooks", None)
    for m in model.modules():
        assert not m._load_state_dict_post_hooks
    assert torch.equal(model(x), dense(x))
    # after finalize, pruning again is allowed
    sparsekit.prune(model, "er-uniform", 0.5)


def test_load_state_dict_reapplies_masks():
    model = small_cnn()
    dense_sd = {k: v.clone() for k, v in small_cnn().state_dict().items()}
    ticket = sparsekit.prune(model, "er-erk", 0.1)
    model.load_state_dict(dense_sd)
    assert_masked_zero(model, ticket)
    model.load_state_dict(dense_sd, assign=True)  # replaces the Parameters
    assert_masked_zero(model, ticket)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, steps=2)
    assert_masked_zero(model, ticket)


def test_double_prune_is_refused():
    model = small_cnn()
    sparsekit.prune(model, "er-uniform", 0.5)
    with pytest.raises(sparsekit.SparsekitError, match="finalize"):
        sparsekit.prune(model, "er-uniform", 0.5)


def test_tied_and_attention_models_train():
    lm = TiedLM()
    t = sparsekit.prune(lm, "er-uniform", 0.2)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    idx = torch.randint(0, 50, (4, 7))
    for _ in range(3):
        loss = nn.functional.cross_entropy(lm(idx).flatten(0, 1), idx.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_masked_zero(lm, t)
    tr = transformer()
    t2 = sparsekit.prune(tr, "er-erk", 0.1)
    opt = torch.optim.SGD(tr.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        loss = tr(torch.randn(2, 5, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_masked_zero(tr, t2)


def test_density_one_is_noop():
    model = small_cnn()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    t = sparsekit.prune(model, "er-balanced", 1.0)
    assert t.masks == {} and not sparsekit.is_pruned(model)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert t.report().totals["realised_density"] == 1.0


def test_model_to_other_dtype_keeps_enforcement():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).double()
    t = sparsekit.prune(model, "er-uniform", 0.3)
    model.float()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        loss = model(torch.randn(4, 8)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_masked_zero(model, t)


def test_import_is_lean_and_does_not_touch_cuda():
    code = ("import sys, torch, sparsekit; "
            "assert not torch.cuda.is_initialized(); "
            "bad = [m for m in ('torchvision', 'rich', 'click', 'onnx', 'transformers', 'lightning', "
            "'pytorch_lightning', 'accelerate', 'torch.distributed.tensor', 'sparsekit.integrations') "
            "if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mask_follows_a_replaced_parameter_at_the_next_step():
    """fully_shard swaps a module's Parameters for new ones; the mask moves to the new Parameter."""
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    t = sparsekit.prune(model, "er-uniform", 0.2, seed=3)
    old = model[0].weight
    model[0].weight = nn.Parameter(torch.randn(16, 16))  # a dense replacement, same shape
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    assert model[0].weight is not old
    assert_masked_zero(model, t)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
    assert_masked_zero(model, t)
    assert sparsekit.ticket_of(model) is t


@pytest.mark.parametrize("replacement", ["flat", "removed"])
def test_parameters_replaced_by_something_else_fail_loudly(replacement):
    """What FSDP1 does (flat or removed Parameters) is named in an error at the first step, not trained dense."""
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    sparsekit.prune(model, "er-uniform", 0.2, seed=3)
    w = model[0].weight
    del model[0]._parameters["weight"]
    if replacement == "flat":
        model[0].weight = nn.Parameter(w.detach().reshape(-1).clone())
    else:
        model[0].weight = w.detach().clone()  # a plain tensor attribute, as FSDP1 sets during forward
    opt = torch.optim.SGD([p for p in model.parameters()], lr=0.1)
    with pytest.raises(SparsekitError, match="FSDP1.*fully_shard"):
        opt.step()
    other = nn.Linear(4, 4)  # said once: an unrelated model's optimizer is not blocked
    sparsekit.prune(other, "er-uniform", 0.5)
    torch.optim.SGD(other.parameters(), lr=0.1).step()


def test_fsdp_class_names_report_the_user_class():
    from sparsekit.layers import type_name

    class FSDPModule:  # stands in for torch.distributed.fsdp.FSDPModule
        pass

    fsdp_linear = type("FSDPLinear", (FSDPModule, nn.Linear), {})
    m = nn.Linear(2, 2)
    m.__class__ = fsdp_linear
    assert type_name(m) == "Linear"
    other = type("FSDPThing", (FSDPModule, nn.Linear), {})  # not FSDP's naming: left alone
    m.__class__ = other
    assert type_name(m) == "FSDPThing"


@pytest.mark.parametrize("budget", [0.0, 0.25, 1.0])
def test_dense_gradient_masks_follow_the_budget_and_stay_exact(monkeypatch, budget):
    monkeypatch.setattr(sys.modules["sparsekit.attach"], "DENSE_MASK_BUDGET", budget)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 32), nn.Linear(32, 64), nn.Linear(64, 4))
    t = sparsekit.prune(model, "er-uniform", 0.2, seed=1)
    handles = {n: p._sparsekit_mask for n, p in model.named_parameters() if hasattr(p, "_sparsekit_mask")}
    sizes = {n: model.get_parameter(n).numel() for n in handles}
    chosen = {n for n, h in handles.items() if h.multiply}
    assert sum(sizes[n] for n in chosen) <= budget * sum(sizes.values())
    smallest_first = sorted(sizes, key=sizes.get)
    assert chosen == set(smallest_first[:len(chosen)])  # smallest layers first
    assert (len(chosen) == len(handles)) == (budget == 1.0) and (not chosen) == (budget == 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 8)).pow(2).sum().backward()
        for name, p, mk in sparsekit.masked_parameters(model):
            assert bool((p.grad[~mk] == 0).all()) and bool((p.grad[mk] != 0).any()), name
        opt.step()
    assert_masked_zero(model, t)


def test_dense_mask_budget_is_validated():
    with pytest.raises(ValueError, match="dense_mask_budget"):
        sparsekit.attach(nn.Linear(4, 4), {"weight": torch.ones(4, 4, dtype=torch.bool)}, dense_mask_budget=1.5)
