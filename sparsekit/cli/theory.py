"""``sparsekit theory``: the paper's width bounds and existence probabilities (§2, App. A.2-A.6).

* ``theory widths``: Theorems 2.4-2.6, how wide an ER source must be to contain a weak ticket of a
  target, with the analytic (and, with ``--simulate N``, Monte-Carlo) existence probability;
* ``theory lower-bound``: Theorem 2.7;
* ``theory subset-sum``: Lemma 2.1, with an empirical check (``--check N``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from . import stdout_console

__all__ = ["theory"]

CTX = {"help_option_names": ["-h", "--help"]}


class _Floats(click.ParamType):
    """One number or a comma-separated list of numbers."""

    name = "P[,P...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            values = [float(v) for v in value.split(",")]
        except ValueError:
            self.fail(f"expected a number or comma-separated numbers such as 0.1 or 1,0.1,0.1; got {value!r}",
                      param, ctx)
        return values[0] if len(values) == 1 else values


def _widths(value: str) -> list[int]:
    try:
        widths = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 784,300,100,10; got {value!r}",
                                 param_hint="--target") from None
    if len(widths) < 2 or min(widths) < 1:
        raise click.BadParameter("needs at least two positive widths: inputs first, outputs last (784,300,100,10)",
                                 param_hint="--target")
    return widths


@click.group("theory", context_settings=CTX)
def theory() -> None:
    """Width bounds and existence probabilities of lottery tickets in ER networks (paper §2)."""


@theory.command("widths", context_settings=CTX)
@click.option("--target", "target_spec", default=None, metavar="D,N1,...,NL",
              help="Widths of a dense fully connected target, inputs first, e.g. 784,300,100,10.")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Or a target model: sparsekit:NAME, torchvision:NAME, package.module:factory or a file; its "
                   "Linear/Conv layers must form a chain (Theorem 2.6 counts nonzero filter elements; pooling "
                   "and normalisation layers are not part of the theory and are ignored).")
@click.option("--arch", metavar="SPEC", default=None, help="Architecture for a state_dict file given as --model.")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled --model file (runs code from the file).")
@click.option("--density", "densities", type=_Floats(), required=True,
              help="ER density p_l of source layers 1..L: one number, or L comma-separated numbers.")
@click.option("--delta", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Allowed failure probability.")
@click.option("--bound", type=click.Choice(["log", "exact"]), default="log", show_default=True,
              help="log: Theorem 2.5 as stated; exact: the product inequality solved per layer.")
@click.option("--simulate", "trials", type=click.IntRange(1), default=None, metavar="N",
              help="Also estimate the probability from N source networks with real ER masks.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the simulation.")
@click.option("--device", default="cpu", show_default=True, help="Where the simulation draws masks (cpu, cuda).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def widths(target_spec: str | None, model_spec: str | None, arch: str | None, trust_pickle: bool, densities: Any,
           delta: float, bound: str, trials: int | None, seed: int, device: str, as_json: bool) -> None:
    """Source widths with which an ER network contains a weak ticket of TARGET (Theorems 2.4/2.5).

    Prints the overparametrisation factors q_l (backwards from q_L = 1, App. A.4), the source widths,
    weight counts and the probability that the construction succeeds. The target is --target (widths)
    or --model (a network; Theorem 2.6 for convolutions).
    """
    from sparsekit.theory import mask_entries_per_trial, simulate_existence, weak_ticket_widths

    if (target_spec is None) == (model_spec is None):
        raise click.UsageError("give the target as --target D,N1,...,NL or as --model SPEC (one of them)")
    if model_spec is not None:
        from ._models import load_model

        target: Any = load_model(model_spec, arch=arch, trust_pickle=trust_pickle)
    else:
        target = _widths(target_spec)
    plan = weak_ticket_widths(target, densities, delta, bound=bound)
    estimate = None
    if trials is not None:
        entries = mask_entries_per_trial(plan.target, plan.source_widths)
        if not as_json:
            click.echo(f"simulating {trials} source networks: {entries:,} mask entries each "
                       f"({entries * trials:.3g} in all) ...", err=True)
        estimate = simulate_existence(plan.target, plan.source_widths, plan.densities, trials, seed, device=device)
    if as_json:
        out = plan.to_dict()
        if estimate is not None:
            out["simulation"] = estimate.to_dict()
        click.echo(json.dumps(out, indent=2))
        return
    console = stdout_console()
    t = plan.target
    console.print(f"target {','.join(map(str, (t.input_dim, *t.widths)))}: depth L = {t.depth}, "
                  f"{sum(t.nonzeros):,} weights; Theorem {plan.theorem} ({plan.bound} bound), delta = {plan.delta:g}",
                  markup=False)
    console.print(plan.table(), markup=False)
    console.print(f"source widths: {','.join(map(str, plan.source_widths))} (overparametrisation q = "
                  f"{','.join(map(str, plan.copies))})", markup=False)
    console.print(f"weights: source {sum(plan.source_parameters):,} before masking, "
                  f"ER layers 1..L {sum(plan.expected_er_parameters):,.0f} expected, "
                  f"weak ticket {sum(plan.ticket_parameters):,}", markup=False)
    console.print(f"existence probability (analytic): {plan.probability:.6f} (>= 1 - delta = {1 - plan.delta:g})",
                  markup=False)
    if estimate is not None:
        verdict = "agrees" if estimate.agrees() else "DISAGREES"
        console.print(f"existence probability (simulated, {estimate.trials} trials, seed {seed}): "
                      f"{estimate.probability:.6f} ± {estimate.stderr:.6f}; {verdict} within 3 standard errors "
                      f"({estimate.seconds:.1f} s)", markup=False)
        console.print("failures per layer: " + ", ".join(
            f"l={l + 1}: {f}" for l, f in enumerate(estimate.layer_failures)), markup=False)


@theory.command("lower-bound", context_settings=CTX)
@click.option("--density", type=click.FloatRange(0, 1, min_open=True, max_open=True), required=True, help="p.")
@click.option("--d", "d", type=click.IntRange(1), required=True, help="Input dimension.")
@click.option("--delta", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def lower_bound(density: float, d: int, delta: float, as_json: bool) -> None:
    """Theorem 2.7: the width below which a 1-hidden-layer ER(p) source cannot represent every target.

    Also prints the exact necessary width (every input needs a path to the output) and its probability.
    """
    from sparsekit.theory import lower_bound_width, minimal_path_width, path_probability

    stated = lower_bound_width(density, d, delta)
    exact = minimal_path_width(density, d, delta)
    prob = path_probability(exact, density, d)
    below = path_probability(exact - 1, density, d)
    if as_json:
        click.echo(json.dumps({"density": density, "d": d, "delta": delta, "theorem_2_7": stated,
                               "minimal_path_width": exact, "path_probability": prob,
                               "path_probability_one_less": below}))
        return
    console = stdout_console()
    console.print(f"Theorem 2.7: widths n_S,1 < {stated:.4f} fail with probability > delta = {delta:g}", markup=False)
    console.print(f"exact: every input has a path to the output with probability >= {1 - delta:g} from n_S,1 = {exact} "
                  f"on (P = {prob:.6f}; n_S,1 = {exact - 1}: P = {below:.6f})", markup=False)


@theory.command("subset-sum", context_settings=CTX)
@click.option("--density", type=click.FloatRange(0, 1, min_open=True, max_open=True), required=True, help="p.")
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True, max_open=True), required=True,
              help="Approximation tolerance.")
@click.option("--delta", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True)
@click.option("-C", "--constant", "C", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="The lemma's generic constant.")
@click.option("--check", "trials", type=click.IntRange(1), default=None, metavar="N",
              help="Measure the success rate of N draws at the lemma's n (exact subset search, n <= 44).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def subset_sum(density: float, eps: float, delta: float, C: float, trials: int | None, seed: int,
               as_json: bool) -> None:
    """Lemma 2.1: how many masked uniform variables approximate any z in [-1,1] within EPS."""
    from sparsekit.theory import subset_sum_check, subset_sum_width

    n = subset_sum_width(density, eps, delta, C)
    check = subset_sum_check(n, density, eps, trials=trials, seed=seed) if trials is not None else None
    if as_json:
        out: dict[str, Any] = {"density": density, "eps": eps, "delta": delta, "C": C, "n": n}
        if check is not None:
            out["check"] = {"trials": check.trials, "success_rate": check.success_rate, "stderr": check.stderr,
                            "mean_kept": check.mean_kept}
        click.echo(json.dumps(out))
        return
    console = stdout_console()
    console.print(f"Lemma 2.1: n >= {n} (C = {C:g})", markup=False)
    if check is not None:
        console.print(f"measured: {check.success_rate:.4f} ± {check.stderr:.4f} of {check.trials} draws approximate a "
                      f"uniform z within {eps:g} (target >= 1 - delta = {1 - delta:g}); "
                      f"{check.mean_kept:.1f} variables unmasked on average", markup=False)
