"""Rewiring (RigL, SET): exact counts, zero regrowth with fresh optimizer state, right entries, flow, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from train_helpers import blobs

import sparsekit
from sparsekit.errors import SparsekitError
from sparsekit.train import RewireMethod, Rewirer
from sparsekit.train.rewire import register_rewire_method

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def counts(model: nn.Module) -> dict[str, int]:
    return {n: int(mk.sum()) for n, _p, mk in sparsekit.masked_parameters(model)}


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: mk.clone() for n, _p, mk in sparsekit.masked_parameters(model)}


def train_steps(model, opt, rewirer, steps, seed=0):
    x, y = blobs(64, seed=seed).tensors
    infos = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        infos.append(rewirer.step())
    return [i for i in infos if i is not None]


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_counts_preserved_regrown_zero_state_reset_flow_kept(method):
    model = net()
    sparsekit.prune(model, "er-erk", 0.2, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = counts(model)
    r = Rewirer(model, opt, method, total_steps=40, update_every=5, seed=3)
    m0 = masks(model)
    updates = train_steps(model, opt, r, 40)
    assert [u["step"] for u in updates] == [5, 10, 15, 20, 25, 30]  # stop_at 0.75 of 40
    assert counts(model) == before  # every layer keeps its number of weights
    m1 = masks(model)
    assert any(not torch.equal(m0[k], m1[k]) for k in m0)  # something was rewired
    for _n, p, mk in sparsekit.masked_parameters(model):
        assert bool((p[~mk] == 0).all())
    assert r.dead_units() == 0
    t = r.ticket()
    assert t.kind == "rewired" and t.method_options["rewire"]["method"] == method
    assert all(torch.equal(t.masks[k], m1[k]) for k in m1)


def test_regrown_weights_start_at_zero_with_fresh_momentum():
    model = net()
    sparsekit.prune(model, "er-erk", 0.2, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r = Rewirer(model, opt, "rigl", total_steps=100, update_every=3, seed=0)
    x, y = blobs(64).tensors
    for _ in range(3):
        before = masks(model)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        r.step()
    after = masks(model)
    for n, p, _mk in sparsekit.masked_parameters(model):
        grown = after[n] & ~before[n]
        dropped = before[n] & ~after[n]
        assert grown.any() and dropped.any()
        assert bool((p[grown] == 0).all())
        buf = opt.state[p]["momentum_buffer"]
        assert bool((buf[grown] == 0).all()) and bool((buf[dropped] == 0).all())


class Fixed(RewireMethod):
    """Grow scores given by hand (for checking which entries are chosen)."""

    name = "fixed-test"

    def __init__(self, scores):
        self.scores = scores

    def grow_scores(self, weight, grad, fqn, step, seed):
        return self.scores.reshape(-1)


def test_drop_smallest_magnitude_grow_highest_score_by_hand():
    lin = nn.Linear(4, 3, bias=False)
    model = nn.Sequential(lin)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    sparsekit.attach(model, {"0.weight": mask})
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[5.0, 0.1, 0, 0], [4.0, 3.0, 0.2, 0], [0, 2.0, 6.0, 7.0]]) * mask)
    grow = torch.zeros(3, 4)
    grow[0, 3] = 9.0  # best candidate
    grow[2, 0] = 8.0  # second best
    grow[1, 3] = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    r = Rewirer(model, opt, Fixed(grow), total_steps=100, update_every=1, drop_fraction=0.25,
                drop_schedule="constant", seed=0)
    r.update()
    new = masks(model)["0.weight"]
    # 8 kept, drop round(0.25 * 8) = 2 weakest: (0,1)=0.1 and (1,2)=0.2; grow the 2 best: (0,3), (2,0)
    expect = mask.clone()
    expect[0, 1] = expect[1, 2] = False
    expect[0, 3] = expect[2, 0] = True
    assert torch.equal(new, expect)


def test_flow_protected_drop_keeps_last_edges():
    lin = nn.Linear(3, 2, bias=False)
    model = nn.Sequential(lin)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    sparsekit.attach(model, {"0.weight": mask})
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[5.0, 6.0, 0.01], [0.001, 0, 0]]) * mask)  # weakest = row 1's only edge
    grow = torch.zeros(2, 3)
    grow[1, 2] = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    r = Rewirer(model, opt, Fixed(grow), total_steps=100, update_every=1, drop_fraction=0.25,
                drop_schedule="constant")
    r.update()
    new = masks(model)["0.weight"]
    assert bool(new[1].any()) and bool(new[:, 2].any())  # row 1 and column 2 kept their last edges
    # (1,0) and (0,2) are the only edges of row 1 and of column 2: the weakest safe edge (0,0) went instead
    assert not new[0, 0] and new[1, 0] and new[0, 2] and new[1, 2]
    r2_model = nn.Sequential(nn.Linear(3, 2, bias=False))
    sparsekit.attach(r2_model, {"0.weight": mask})
    with torch.no_grad():
        r2_model[0].weight.copy_(lin.weight.detach() * 0 + torch.tensor([[5.0, 6.0, 0.01], [0.001, 0, 0]]) * mask)
    r2 = Rewirer(r2_model, torch.optim.SGD(r2_model.parameters(), lr=0.0), Fixed(grow), total_steps=100,
                 update_every=1, drop_fraction=0.25, drop_schedule="constant", flow=False)
    r2.update()
    assert not masks(r2_model)["0.weight"][1, 0]  # without flow the last edge of row 1 is dropped


def test_sparse_to_sparse_schedule_reaches_final_density():
    model = net()
    sparsekit.prune(model, "er-erk", 0.3, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    r = Rewirer(model, opt, "rigl", total_steps=40, update_every=5, final_density=0.1)
    start = r.density()
    updates = train_steps(model, opt, r, 40)
    dens = [u["density"] for u in updates]
    assert all(a >= b for a, b in zip([start, *dens], dens, strict=False))  # monotone
    assert r.density() == pytest.approx(0.1, rel=0.03)
    for fqn in r.initial:  # each layer at its cubic-schedule target
        assert counts(model)[fqn] == r.target_count(fqn, 30)
    assert r.dead_units() == 0


def test_cosine_drop_schedule_and_update_steps():
    model = net()
    sparsekit.prune(model, "er-erk", 0.3)
    r = Rewirer(model, torch.optim.SGD(model.parameters(), lr=0.1), "set", total_steps=1000)
    assert r.drop_fraction_at(0) == pytest.approx(0.5)
    assert r.drop_fraction_at(375) == pytest.approx(0.25)
    assert r.drop_fraction_at(750) == pytest.approx(0.0, abs=1e-12)
    assert [s for s in range(1, 1001) if r.is_update_step(s)] == list(range(100, 751, 100))


def test_set_is_deterministic_from_seed():
    def run(seed):
        model = net()
        sparsekit.prune(model, "er-erk", 0.2, seed=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        r = Rewirer(model, opt, "set", total_steps=20, update_every=5, seed=seed)
        train_steps(model, opt, r, 20)
        return masks(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_rewire_improves_on_fixed_mask_and_saves_ticket(tmp_path):
    data, test = blobs(512), blobs(128, seed=1)
    kw = dict(epochs=6, lr=0.05, batch_size=32, device="cpu", progress=False, eval_data=test)
    fixed = net()
    sparsekit.prune(fixed, "er-uniform", 0.03, seed=2)
    acc_fixed = sparsekit.fit_weak(fixed, data, **kw)[-1].eval_acc
    model = net()
    sparsekit.prune(model, "er-uniform", 0.03, seed=2)
    before = counts(model)
    ticket = sparsekit.rewire(model, data, method="rigl", update_every=8, **kw)
    assert counts(model) == before
    assert ticket.history[-1].eval_acc >= acc_fixed
    assert ticket.history.column("updates")[-1] > 0
    path = sparsekit.save_ticket(ticket, tmp_path / "r.safetensors")
    loaded = sparsekit.load_ticket(path)
    assert loaded.kind == "rewired" and all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.masks)


def test_rewire_resume_is_exact(tmp_path):
    class Stop(sparsekit.Callback):
        def on_epoch_end(self, state, stats):
            if state.epoch == 2:
                raise KeyboardInterrupt

    kw = dict(epochs=4, lr=0.05, batch_size=32, device="cpu", progress=False, update_every=5, method="set")
    a = net()
    sparsekit.prune(a, "er-erk", 0.2, seed=1)
    ta = sparsekit.rewire(a, blobs(), checkpoint_dir=tmp_path / "a", **kw)
    b = net()
    sparsekit.prune(b, "er-erk", 0.2, seed=1)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.rewire(b, blobs(), checkpoint_dir=tmp_path / "b", callbacks=[Stop()], **kw)
    c = net()
    sparsekit.prune(c, "er-erk", 0.2, seed=1)
    tc = sparsekit.rewire(c, blobs(), checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert all(torch.equal(ta.masks[k], tc.masks[k]) for k in ta.masks)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_errors():
    with pytest.raises(SparsekitError, match="pruned model"):
        Rewirer(net(), torch.optim.SGD(net().parameters(), lr=0.1), total_steps=10)
    model = net()
    sparsekit.prune(model, "er-erk", 0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown rewire method"):
        Rewirer(model, opt, "magic", total_steps=10)
    with pytest.raises(ValueError, match="final_density must be in"):
        Rewirer(model, opt, total_steps=10, final_density=0.5)
    with pytest.raises(ValueError, match="drop_schedule"):
        Rewirer(model, opt, total_steps=10, drop_schedule="linear")
    r = Rewirer(model, opt, "rigl", total_steps=10, update_every=1)
    with pytest.raises(SparsekitError, match="no dense gradient"):
        r.step()  # no backward happened
    with pytest.raises(ValueError, match="taken or empty"):
        register_rewire_method(type("Dup", (RewireMethod,), {"name": "rigl"}))


def test_rigl_update_uses_dense_gradient_only_on_update_steps():
    model = net()
    sparsekit.prune(model, "er-erk", 0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = Rewirer(model, opt, "rigl", total_steps=100, update_every=4)
    x, y = blobs(32).tensors
    seen = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        seen.append([p._sparsekit_mask.captured is not None for _n, p, _m in
                     sparsekit.masked_parameters(model)])
        opt.step()
        r.step()
    n = len(seen[0])
    assert n >= 2 and seen[:3] == [[False] * n] * 3 and seen[3] == [True] * n
    assert all(p._sparsekit_mask.captured is None for _n, p, _m in sparsekit.masked_parameters(model))
    assert math.isfinite(r.density())
