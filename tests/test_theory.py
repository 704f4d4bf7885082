"""sparsekit.theory: hand-computed formulas, Monte-Carlo agreement, the constructive embedding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
from sparsekit import theory as T
from sparsekit.models import mlp
from sparsekit.sampling import draw_mask

# ---------------------------------------------------------------------------------------------
# Theorems 2.4 / 2.5 / 2.6: widths, computed by hand
# ---------------------------------------------------------------------------------------------


def test_single_hidden_layer_widths_by_hand():
    # Theorem 2.4, target 2-2-1, p = 1/2, delta = 1/2: m_2 = 2, m_1 = 4.
    plan = T.weak_ticket_widths((2, 2, 1), 0.5, 0.5)
    # q_1 = log(2 * 2 / 0.5) / log 2 = log2(8) = 3 exactly (float noise must not make it 4)
    # q_0 = log2(2 * 4 * 3 / 0.5) = log2(48) = 5.58 -> 6
    assert plan.copies == (6, 3, 1)
    assert plan.source_widths == (12, 6, 1)
    assert plan.theorem == "2.4"
    # P = (1 - 2^-6)^(4*3) * (1 - 2^-3)^(2*1)
    assert plan.probability == pytest.approx((63 / 64) ** 12 * (7 / 8) ** 2, rel=1e-12)
    assert plan.layer_probabilities == pytest.approx(((63 / 64) ** 12, (7 / 8) ** 2), rel=1e-12)
    assert plan.source_parameters == (12 * 2, 6 * 12, 1 * 6)
    assert plan.ticket_parameters == (12, 4 * 3, 2 * 1)
    assert plan.expected_er_parameters == pytest.approx((0.5 * 72, 0.5 * 6))


def test_depth_three_widths_by_hand():
    # Theorem 2.5, 784-300-100-10, p = 0.1, delta = 0.1, L = 3: backwards from q_3 = 1.
    lp = math.log(1 / 0.9)
    q2 = math.ceil(math.log(3 * 1000 * 1 / 0.1) / lp)
    q1 = math.ceil(math.log(3 * 30000 * q2 / 0.1) / lp)
    q0 = math.ceil(math.log(3 * 235200 * q1 / 0.1) / lp)
    assert (q0, q1, q2) == (199, 174, 98)
    plan = T.weak_ticket_widths((784, 300, 100, 10), 0.1, 0.1)
    assert plan.copies == (q0, q1, q2, 1)
    assert plan.source_widths == (q0 * 784, q1 * 300, q2 * 100, 10)
    assert plan.theorem == "2.5"
    assert plan.probability >= 0.9


def test_layerwise_densities_and_depth_one():
    # p = (0.2, 1.0): a dense last layer needs one copy; L = 1 target (3 -> 2): q_0 = log(6 / delta) / log(1/(1-p)).
    plan = T.weak_ticket_widths((4, 3, 2), (0.2, 1.0), 0.1)
    assert plan.copies[1] == 1
    assert plan.copies[0] == math.ceil(math.log(2 * 12 * 1 / 0.1) / math.log(1 / 0.8))
    one = T.weak_ticket_widths((3, 2), 0.25, 0.05)
    assert one.copies == (math.ceil(math.log(1 * 6 / 0.05) / math.log(1 / 0.75)), 1)


def test_exact_bound_by_hand_and_never_above_log_bound():
    # exact: q_{l-1} = ceil(log(1 - (1-delta)^(1/(L m q_l))) / log(1-p))
    plan = T.weak_ticket_widths((2, 2, 1), 0.5, 0.5, bound="exact")
    q1 = math.ceil(math.log(1 - 0.5 ** (1 / (2 * 2 * 1))) / math.log(0.5))
    q0 = math.ceil(math.log(1 - 0.5 ** (1 / (2 * 4 * q1))) / math.log(0.5))
    assert plan.copies == (q0, q1, 1) == (6, 3, 1)
    # a case where the relaxation matters: large delta
    ex = T.weak_ticket_widths((5, 4, 3), 0.3, 0.9, bound="exact")
    lg = T.weak_ticket_widths((5, 4, 3), 0.3, 0.9)
    assert ex.copies[1] == math.ceil(math.log(1 - 0.1 ** (1 / 24)) / math.log(0.7)) == 7
    assert lg.copies[1] == math.ceil(math.log(2 * 12 / 0.9) / math.log(1 / 0.7)) == 10
    assert ex.copies[0] < lg.copies[0]


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 40), min_size=2, max_size=5),
       p=st.floats(0.01, 0.99), delta=st.floats(0.001, 0.99), bound=st.sampled_from(["log", "exact"]))
def test_plans_meet_their_guarantee(widths, p, delta, bound):
    plan = T.weak_ticket_widths(widths, p, delta, bound=bound)
    assert plan.copies[-1] == 1 and min(plan.copies) >= 1
    assert plan.probability >= 1 - delta - 1e-9
    assert T.existence_probability(widths, plan.source_widths, p) == pytest.approx(plan.probability, rel=1e-9)
    # one copy fewer in any layer (where there is more than one) loses the per-layer guarantee of the split
    depth = len(widths) - 1
    for l in range(depth):  # noqa: E741
        if plan.copies[l] > 1:
            fewer = list(plan.copies)
            fewer[l] -= 1
            sw = [fewer[0] * widths[0], *(fewer[i] * widths[i] for i in range(1, depth + 1))]
            per = T.existence_probability(widths, sw, p, per_layer=True)
            assert per[l] < (1 - delta) ** (1 / depth) * (1 + 1e-9) or bound == "log"
    if bound == "exact":
        log_plan = T.weak_ticket_widths(widths, p, delta)
        assert all(a <= b for a, b in zip(plan.copies, log_plan.copies, strict=True))


def test_conv_target_theorem_2_6_counts_filter_elements():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    shape = T.target_shape(net)
    assert shape.input_dim == 3 and shape.widths == (4, 2) and shape.kernels == (9, 9)
    assert shape.nonzeros == (4 * 3 * 9, 2 * 4 * 9)
    plan = T.weak_ticket_widths(net, 0.3, 0.1)
    assert plan.theorem == "2.6"
    lp = math.log(1 / 0.7)
    q1 = math.ceil(math.log(2 * 72 / 0.1) / lp)
    assert plan.copies == (math.ceil(math.log(2 * 108 * q1 / 0.1) / lp), q1, 1)
    assert plan.source_widths == (plan.copies[0] * 3, q1 * 4, 2)
    assert plan.source_parameters[2] == 2 * q1 * 4 * 9


def test_module_target_counts_nonzeros_and_flatten():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    with torch.no_grad():
        net[3].weight[:, :5] = 0  # 20 zeros
    shape = T.target_shape(net)
    assert shape.kernels == (9, 9) and shape.widths == (2, 4)
    assert shape.nonzeros == (2 * 9, 4 * 18 - 20)
    assert shape.pattern(2).shape == (4, 2, 9)
    assert int(shape.pattern(2).sum()) == 52
    dense = T.weak_ticket_widths((4, 3, 2), 0.2, 0.1)
    sparse_target = mlp(4, (3,), 2)
    with torch.no_grad():
        sparse_target[3].weight.zero_()
        sparse_target[3].weight[0, 0] = 1.0
    sparse = T.weak_ticket_widths(sparse_target, 0.2, 0.1)
    assert sparse.target.nonzeros == (12, 1)
    assert sparse.copies[1] < dense.copies[1]


@pytest.mark.parametrize(("call", "match"), [
    (lambda: T.weak_ticket_widths((784,), 0.1, 0.1), "at least two widths"),
    (lambda: T.weak_ticket_widths((784, 0, 10), 0.1, 0.1), "positive integer"),
    (lambda: T.weak_ticket_widths("784,10", 0.1, 0.1), "sequence of widths"),
    (lambda: T.weak_ticket_widths((784, 10), 0.0, 0.1), r"p_1 must be a number in \(0, 1\]"),
    (lambda: T.weak_ticket_widths((784, 10), 1.5, 0.1), r"\(0, 1\]"),
    (lambda: T.weak_ticket_widths((784, 10), (0.1, 0.2), 0.1), "L = 1 numbers"),
    (lambda: T.weak_ticket_widths((784, 10), 0.1, 1.0), "delta"),
    (lambda: T.weak_ticket_widths((784, 10), 0.1, 0.1, bound="tight"), "bound must be"),
    (lambda: T.weak_ticket_widths(nn.Sequential(nn.ReLU()), 0.1, 0.1), "no Linear or Conv"),
    (lambda: T.weak_ticket_widths(nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)), 0.1, 0.1), "chain"),
    (lambda: T.weak_ticket_widths(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), 0.1, 0.1), "grouped"),
    (lambda: T.existence_probability((4, 3, 2), (8, 6), 0.5), "L \\+ 1 = 3"),
    (lambda: T.existence_probability((4, 3, 2), (8, 2, 2), 0.5), "below the 3 neurons of target layer 1"),
    (lambda: T.existence_probability((4, 3, 2), (3, 6, 2), 0.5), "below the 4 inputs"),
    (lambda: T.existence_probability((4, 3, 2), (8, 6, 4), 0.5), "q_L = 1"),
    (lambda: T.lower_bound_width(1.0, 10, 0.1), r"density must be a number in \(0, 1\)"),
    (lambda: T.path_probability(-1, 0.5, 3), "non-negative integer"),
    (lambda: T.lower_bound_width(0.1, 0, 0.1), "d must be a positive integer"),
    (lambda: T.subset_sum_width(0.5, 0.0, 0.1), "eps"),
    (lambda: T.subset_sum_width(0.5, 0.1, 0.1, C=0), "C"),
    (lambda: T.subset_sum_check(45, 0.5, 0.1), "at most 44"),
    (lambda: T.subset_sum_check(10, 0.5, 0.1, z=1.5), r"z must be a number in \[-1, 1\]"),
    (lambda: T.simulate_existence((4, 3, 2), (8, 6, 2), 0.5, trials=0), "trials"),
])
def test_invalid_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Existence probability: analytic vs Monte-Carlo with real masks
# ---------------------------------------------------------------------------------------------

TARGET = (6, 5, 4, 3)
WIDTHS = (60, 45, 24, 3)  # q = (10, 9, 6, 1): P close to 1/2, where a Monte-Carlo check has most power


def test_existence_probability_by_hand():
    p = 0.5
    m = (30, 20, 12)
    q = (10, 9, 6, 1)
    expected = math.prod((1 - (1 - p) ** q[l - 1]) ** (m[l - 1] * q[l]) for l in (1, 2, 3))
    assert T.existence_probability(TARGET, WIDTHS, p) == pytest.approx(expected, rel=1e-12)
    # neurons beyond q_l n_T,l are unused: one extra neuron changes nothing
    assert T.existence_probability(TARGET, (61, 46, 25, 3), p) == pytest.approx(expected, rel=1e-12)
    assert T.existence_probability(TARGET, WIDTHS, 1.0) == 1.0


def test_simulation_agrees_with_the_analytic_probability():
    est = T.simulate_existence(TARGET, WIDTHS, 0.5, trials=2000, seed=11)
    assert 0.4 < est.analytic < 0.6
    assert est.agrees(3.0), (est.probability, est.analytic, est.stderr)
    # and per layer
    for fails, a in zip(est.layer_failures, est.layer_analytic, strict=True):
        se = math.sqrt(a * (1 - a) / est.trials)
        assert abs((1 - fails / est.trials) - a) <= 3 * se
    # Power: a plausible mistake in the formula (exponent m_l q_{l-1} instead of m_l q_l) is far off.
    q, m = (10, 9, 6, 1), (30, 20, 12)
    wrong = math.prod((1 - 0.5 ** q[l - 1]) ** (m[l - 1] * q[l - 1]) for l in (1, 2, 3))
    assert abs(est.probability - wrong) > 10 * est.stderr


def test_simulation_on_a_pruned_target_and_on_convolutions():
    g = torch.Generator().manual_seed(0)
    target = mlp(6, (5, 4), 3)
    with torch.no_grad():
        for m in target:
            if isinstance(m, nn.Linear):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) < 0.5).float())
    conv = nn.Sequential(nn.Conv1d(2, 3, 2), nn.ReLU(), nn.Conv1d(3, 2, 2))
    for net, ranges in ((target, (range(3, 12), range(3, 12), range(2, 10))), (conv, (range(2, 10), range(2, 10)))):
        shape = T.target_shape(net)

        def widths(q, shape=shape):
            hidden = (qi * n for qi, n in zip(q[1:], shape.widths[:-1], strict=True))
            return [q[0] * shape.input_dim, *hidden, shape.widths[-1]]

        q = min(itertools.product(*ranges), key=lambda q: abs(T.existence_probability(net, widths(q), 0.5) - 0.5))
        est = T.simulate_existence(net, widths(q), 0.5, trials=1500, seed=5)
        assert 0.35 < est.analytic < 0.65
        assert est.agrees(3.0), (net, est.probability, est.analytic)


def test_simulation_draws_the_masks_prune_draws():
    """Trial t of simulate_existence is the source er_source(seed=trial_seed(seed, t), flow=None) builds:
    the weak-ticket construction succeeds on that network exactly when the trial succeeds."""
    target = mlp(6, (5, 4), 3)
    outcomes = []
    for s in range(24):
        est = T.simulate_existence(target, WIDTHS, 0.5, trials=1, seed=s)
        source, ticket = T.er_source([6, *WIDTHS], 0.5, seed=T.trial_seed(s, 0), flow=None)
        # the ticket's masks are the draw_mask bits of the simulation
        assert torch.equal(ticket.masks["3.weight"].bool(),
                           draw_mask("3.weight", (45, 60), 0.5, T.trial_seed(s, 0)))
        try:
            emb = T.embed_weak_ticket(target, source)
            ok = True
            assert emb.max_abs_diff(target) <= 1e-5
        except T.EmbeddingError:
            ok = False
        assert ok == (est.successes == 1), s
        outcomes.append(ok)
    assert any(outcomes) and not all(outcomes)  # both cases were exercised


@pytest.mark.parametrize("p0", [0.5, 0.3])
def test_simulated_first_layer_matches_the_construction(p0):
    """With input_density, layer 0 is drawn and assigned as embed_weak_ticket assigns it: same outcome per trial."""
    target = mlp(6, (5, 4), 3)
    outcomes = []
    for s in range(20):
        est = T.simulate_existence(target, WIDTHS, 0.5, trials=1, seed=s, input_density=p0)
        source, _ = T.er_source([6, *WIDTHS], 0.5, input_density=p0, seed=T.trial_seed(s, 0), flow=None)
        try:
            T.embed_weak_ticket(target, source)
            ok = True
        except T.EmbeddingError:
            ok = False
        assert ok == (est.successes == 1), s
        outcomes.append(ok)
    assert any(outcomes) and not all(outcomes)


def test_first_layer_with_flow_repair_is_prunes_layer_0():
    from sparsekit import rng

    for s in range(5):
        ts = T.trial_seed(s, 0)
        source, _ = T.er_source([6, *WIDTHS], 0.5, input_density=0.1, seed=ts, flow="repair")
        masks = {name: mask for name, _, mask in sparsekit.masked_parameters(source)}
        emb_input_of = T._assign_inputs(masks["1.weight"], 6)  # what embed_weak_ticket assigns
        sim_input_of = T._first_layer_blocks(rng.stream_key(ts, T.source_fqn(0), "mask"), 0.1, "repair", ts,
                                              T._layer0(6, 60))
        assert torch.equal(emb_input_of, sim_input_of)
        assert bool((sim_input_of >= 0).all())  # flow repair gives every neuron an input


def test_first_layer_density_one_is_the_papers_assumption_and_sparser_is_worse():
    target = mlp(6, (5, 4), 3)
    paper = T.simulate_existence(target, WIDTHS, 0.5, trials=300, seed=2)
    dense0 = T.simulate_existence(target, WIDTHS, 0.5, trials=300, seed=2, input_density=1.0)
    assert paper.layer_failures == dense0.layer_failures
    sparse0 = T.simulate_existence(target, WIDTHS, 0.5, trials=300, seed=2, input_density=0.1)
    assert sparse0.layer_failures[0] == 300  # without flow repair most layer-0 neurons copy nothing
    repaired = T.simulate_existence(target, WIDTHS, 0.5, trials=300, seed=2, input_density=0.1, flow="repair")
    assert sparse0.layer_failures[0] > repaired.layer_failures[0] > paper.layer_failures[0]
    with pytest.raises(ValueError, match="fully connected targets"):
        T.simulate_existence(nn.Sequential(nn.Conv1d(2, 3, 2)), (4, 3), 0.5, input_density=0.5)
    with pytest.raises(ValueError, match="flow must be None or 'repair'"):
        T.simulate_existence(target, WIDTHS, 0.5, input_density=0.5, flow="resample")


def test_trial_seeds_differ():
    seeds = {T.trial_seed(0, t) for t in range(1000)} | {T.trial_seed(1, t) for t in range(1000)}
    assert len(seeds) == 2000


# ---------------------------------------------------------------------------------------------
# Theorem 2.7
# ---------------------------------------------------------------------------------------------


def test_lower_bound_by_hand():
    # d = 1, delta = 1/2: log(1 / (1 - 1/2)) / log(1 / (1 - p)) with p = 1/2 -> 1
    assert T.lower_bound_width(0.5, 1, 0.5) == pytest.approx(1.0, rel=1e-12)
    v = T.lower_bound_width(0.1, 784, 0.1)
    assert v == pytest.approx(math.log(1 / (1 - 0.9 ** (1 / 784))) / math.log(1 / 0.9), rel=1e-12)


def test_path_probability_by_hand():
    # n = 2, p = 1/2, d = 1: K ~ Bin(2, 1/2); P = 1/2 * 1/2 + 1/4 * 3/4 = 7/16
    assert T.path_probability(2, 0.5, 1) == pytest.approx(7 / 16, rel=1e-12)
    assert T.path_probability(0, 0.3, 2) == 0.0
    assert T.path_probability(3, 1.0, 5) == 1.0
    # d = 1 reduces to 1 - (1 - p^2)^n (one path per hidden neuron, no sharing)
    assert T.path_probability(7, 0.3, 1) == pytest.approx(1 - (1 - 0.09) ** 7, rel=1e-12)


def test_path_probability_by_simulation_and_the_correction_to_app_a6():
    """Every input has a path through the hidden layer with probability sum_k Bin(k) (1 - (1-p)^k)^d.
    App. A.6 multiplies (1 - (1 - p^2)^n) over inputs as if independent; the masks say otherwise."""
    p, d, n, trials = 0.5, 4, 5, 3000
    hits = 0
    for t in range(trials):
        w1 = draw_mask("hidden", (n, d), p, t)
        w2 = draw_mask("out", (1, n), p, t)
        hits += bool((w1 & w2[0][:, None]).any(dim=0).all())
    exact = T.path_probability(n, p, d)
    se = math.sqrt(exact * (1 - exact) / trials)
    assert abs(hits / trials - exact) <= 3 * se
    paper_product = (1 - (1 - p * p) ** n) ** d
    assert abs(hits / trials - paper_product) > 5 * se
    # the product's sharper width bound fails: 6 < 6.39, yet 6 neurons succeed with probability > 1 - delta
    sharper = math.log(1 / (1 - 0.5 ** (1 / d))) / math.log(1 / (1 - p * p))
    assert 6 < sharper and T.path_probability(6, p, d) > 0.5
    assert T.minimal_path_width(p, d, 0.5) == 6


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.02, 0.98), d=st.integers(1, 200), delta=st.floats(0.01, 0.99))
def test_theorem_2_7_holds_and_minimal_path_width_is_minimal(p, d, delta):
    bound = T.lower_bound_width(p, d, delta)
    n_exact = T.minimal_path_width(p, d, delta)
    assert n_exact >= bound - 1e-9  # Theorem 2.7 is a valid (weaker) bound
    below = math.ceil(bound) - 1
    if below >= 0:
        assert T.path_probability(below, p, d) < 1 - delta
    assert T.path_probability(n_exact, p, d) >= 1 - delta
    assert T.path_probability(n_exact - 1, p, d) < 1 - delta


# ---------------------------------------------------------------------------------------------
# Lemma 2.1
# ---------------------------------------------------------------------------------------------


def test_subset_sum_width_by_hand():
    assert T.subset_sum_width(0.5, 0.01, 0.1) == math.ceil(math.log(100) / math.log(2)) == 7
    assert T.subset_sum_width(0.5, 0.01, 0.1, C=2.0) == 14
    assert T.subset_sum_width(0.1, 0.2, 0.05, C=3.0) == math.ceil(3 * math.log(20) / math.log(1 / 0.9))


def test_subset_sum_check_single_variable_by_hand():
    # n = 1, z = 0.5, eps = 0.1: only {X_1} can help: P = p * P(|0.5 - X| <= 0.1) = p * 0.1
    res = T.subset_sum_check(1, 0.6, 0.1, trials=4000, z=0.5, seed=3)
    assert abs(res.success_rate - 0.06) <= 3 * math.sqrt(0.06 * 0.94 / 4000)
    # |z| <= eps: the empty subset always works
    assert T.subset_sum_check(3, 0.2, 0.1, trials=50, z=0.05).success_rate == 1.0
    # mean number of unmasked variables ~ n p
    many = T.subset_sum_check(20, 0.3, 0.05, trials=400, seed=1)
    assert abs(many.mean_kept - 6.0) < 0.5


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 14), p=st.floats(0.05, 1.0), dp=st.floats(0.0, 0.5), eps=st.floats(0.01, 0.3),
       seed=st.integers(0, 2**32))
def test_subset_sum_success_grows_with_n_and_p(n, p, dp, eps, seed):
    base = T.subset_sum_check(n, p, eps, trials=30, seed=seed).successes
    assert T.subset_sum_check(n + 1, p, eps, trials=30, seed=seed).successes >= base
    assert T.subset_sum_check(n, min(1.0, p + dp), eps, trials=30, seed=seed).successes >= base


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1, 1), max_size=9), z=st.floats(-1, 1))
def test_meet_in_the_middle_is_exact(values, z):
    brute = min(abs(z - sum(c)) for r in range(len(values) + 1) for c in itertools.combinations(values, r))
    assert T._closest_subset_error(np.array(values), z) == pytest.approx(brute, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# The constructive embedding
# ---------------------------------------------------------------------------------------------


def _random_target(widths, seed, zero_fraction=0.0):
    torch.manual_seed(seed)
    net = mlp(widths[0], widths[1:-1], widths[-1])
    if zero_fraction:
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Linear):
                    m.weight.mul_((torch.rand(m.weight.shape) >= zero_fraction).float())
    return net


@pytest.mark.parametrize(("widths", "p", "p0", "bounds", "zeros", "seed"), [
    ((8, 6, 5, 3), 0.5, 1.0, (-1.0, 1.0), 0.0, 0),
    ((5, 7, 2), 0.3, 1.0, (0.5, 2.0), 0.0, 1),  # Theorem 2.4 case, positive box: no bias shift
    ((4, 3), 0.4, 1.0, (-3.0, 3.0), 0.0, 2),  # depth 1
    ((6, 5, 4, 4, 2), 0.6, 0.4, (-2.0, 1.0), 0.3, 3),  # sparse first layer, pruned target, depth 4
])
def test_embedding_reproduces_random_targets(widths, p, p0, bounds, zeros, seed):
    target = _random_target(widths, seed, zeros)
    plan = T.weak_ticket_widths(target, p, 0.01)
    source, ticket = T.er_source(plan, input_density=p0, seed=seed)
    er = {name: mask.bool() for name, mask in ticket.masks.items()}
    emb = T.embed_weak_ticket(target, source, input_bounds=bounds)
    assert emb.model is source
    assert emb.max_abs_diff(target, n=2000, seed=seed) <= 1e-5
    # the ticket lives inside the ER mask: S_LT is a subset of S_ER, and nothing outside it is nonzero
    for name, param in source.named_parameters():
        if name.endswith("weight"):
            assert torch.equal(emb.ticket_masks[name], param != 0)
            if name in er:
                assert not bool((emb.ticket_masks[name] & ~er[name]).any())
    # one edge per univariate neuron in use, one per (copy, nonzero target weight) after that
    shape = T.target_shape(target)
    assert emb.representatives[0] == int((emb.input_of >= 0).sum())
    assert emb.representatives[1:] == tuple(m * q for m, q in zip(shape.nonzeros, emb.copies[1:], strict=True))
    assert emb.copies == plan.copies


def test_embedding_with_per_input_bounds_and_float64():
    target = _random_target((3, 4, 2), 7).double()
    source = mlp(3, (9, 8), 2).double()  # unpruned: a dense source, q = (3, 2, 1)
    lo, hi = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 5.0, 3.0])
    emb = T.embed_weak_ticket(target, source, input_bounds=(lo, hi))
    assert emb.copies == (3, 2, 1)
    assert emb.max_abs_diff(target) <= 1e-12
    # outside the box the univariate ReLUs clip and the networks differ: the box matters
    x = torch.tensor([[-50.0, -50.0, -50.0]], dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(source(x), target(x))


def test_under_wide_source_fails_cleanly_and_leaves_the_source_untouched():
    target = _random_target((8, 6, 5, 3), 0)
    source, _ = T.er_source([8, 8, 6, 5, 3], 0.1, seed=1)  # q = 1 everywhere at density 0.1
    before = {k: v.clone() for k, v in source.state_dict().items()}
    with pytest.raises(T.EmbeddingError, match=r"cannot place target weight W\^\(\d\)\[\d+, \d+\]") as info:
        T.embed_weak_ticket(target, source)
    err = info.value
    assert isinstance(err, sparsekit.SparsekitError)
    assert err.layer in (1, 2, 3)
    i, j = err.target_index
    assert float(target[2 * err.layer - 1].weight.detach()[i, j]) != 0.0
    assert "weak_ticket_widths" in str(err)
    for k, v in source.state_dict().items():
        assert torch.equal(v, before[k])


def test_missing_input_block_names_the_weight():
    target = _random_target((3, 2, 2), 0)
    source = mlp(3, (3, 2), 2)
    mask0 = torch.ones(3, 3, dtype=torch.bool)
    mask0[:, 2] = False  # nothing reads input 2
    sparsekit.attach(source, {"1.weight": mask0})
    with pytest.raises(T.EmbeddingError, match="input 2 has no univariate block") as info:
        T.embed_weak_ticket(target, source)
    assert info.value.layer == 1 and info.value.target_index[1] == 2 and info.value.source_neuron is None


@pytest.mark.parametrize(("target", "source", "match"), [
    (mlp(4, (3,), 2), mlp(4, (3,), 2), "one Linear layer more"),
    (mlp(4, (3,), 2), mlp(5, (8, 6), 2), "same number of inputs"),
    (mlp(4, (3,), 2), mlp(4, (8, 6), 3), "same number of outputs"),
    (mlp(4, (3,), 2), mlp(4, (8, 2), 2), "fewer than the 3 of target layer 1"),
    (mlp(4, (3,), 2), mlp(4, (3, 6), 2), "fewer than the 4 inputs"),
    (mlp(4, (3,), 2, activation="tanh"), mlp(4, (8, 6), 2), "plain ReLU MLP"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), mlp(4, (8, 6), 2), "without a ReLU"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), mlp(4, (8,), 3), "ends with a ReLU"),
    (mlp(4, (3,), 2), nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                                    nn.Linear(6, 2)), "no bias"),
])
def test_embedding_rejects_mismatched_networks(target, source, match):
    with pytest.raises(ValueError, match=match):
        T.embed_weak_ticket(target, source)


def test_embedding_input_bounds_are_validated():
    target, source = mlp(4, (3,), 2), mlp(4, (8, 6), 2)
    with pytest.raises(ValueError, match="low <= high"):
        T.embed_weak_ticket(target, source, input_bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="1 or d = 4 entries"):
        T.embed_weak_ticket(target, source, input_bounds=(torch.zeros(3), torch.ones(3)))
    with pytest.raises(TypeError, match="pair"):
        T.embed_weak_ticket(target, source, input_bounds=1.0)


def test_er_source_uses_the_plan_densities():
    plan = T.weak_ticket_widths((6, 5, 4, 3), (0.5, 0.3, 0.8), 0.1)
    source, ticket = T.er_source(plan, input_density=0.9, seed=4, flow=None)
    dens = {r.fqn: r.target_density for r in ticket.layers}
    assert dens == {"1.weight": 0.9, "3.weight": 0.5, "5.weight": 0.3, "7.weight": 0.8}
    assert ticket.method == "er-layerwise"
    assert [m.out_features for m in source if isinstance(m, nn.Linear)] == list(plan.source_widths)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(T, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0
