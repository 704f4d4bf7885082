"""``sparsekit fit``: train tickets from the command line.

Example::

    sparsekit fit weak --model sparsekit:vgg16 --data cifar10:~/data/cifar10 --method er-balanced \\
        --density 0.01 --epochs 160 --checkpoint-dir runs/vgg16 -o vgg16-weak.safetensors
    sparsekit fit weak --data digits --density 0.05 --epochs 30 -o digits.safetensors
    sparsekit fit strong --model sparsekit:resnet18 --data cifar10:~/data --er-density 0.5 --density 0.1 \\
        --levels 5 --epochs-per-level 100 -o strong.safetensors

``fit weak`` prunes the model (or applies ``--ticket``), trains it with :func:`sparsekit.fit_weak`
and writes a weak ticket with the kept weights; ``fit strong`` runs :func:`sparsekit.fit_strong` and
writes a strong ticket (mask bits, init seed, unmasked state). Under ``torchrun`` every rank trains
and rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import sparsekit

from . import UserError, stdout_console
from ._fit_common import _AMP, _check_outputs, _common_options, _finish, _main_rank, save_trained
from ._models import build_model
from ._options import WEIGHTS_DTYPES, DensityType, MethodType, parse_options, size_text

__all__ = ["fit", "weak", "strong", "rewire_cmd"]

class _FitGroup(click.Group):
    """``fit`` with ``imp`` loaded on demand (``fit_imp`` builds on this module's shared options)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "imp"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "imp" and cmd_name not in self.commands:
            from .fit_imp import imp

            self.add_command(imp)
        return super().get_command(ctx, cmd_name)


@click.group("fit", cls=_FitGroup, context_settings={"help_option_names": ["-h", "--help"]})
def fit() -> None:
    """Train tickets: 'weak' trains the kept weights inside fixed ER masks (paper §2.2); 'strong' finds a
    subnetwork of frozen random weights inside an ER network with edge-popup (paper §2.1); 'rewire'
    trains while rewiring the mask with RigL or SET (paper §3, App. A.13)."""


@fit.command("weak", context_settings={"help_option_names": ["-h", "--help"]})
@_common_options
@click.option("-m", "--method", type=MethodType(), default="er-balanced", show_default=True,
              help="Layerwise density scheme (see 'sparsekit methods').")
@click.option("-d", "--density", type=DensityType(), default=None,
              help="Global fraction of weights to keep, in (0, 1]. Required unless --ticket.")
@click.option("-O", "--option", "method_options", multiple=True, metavar="KEY=VALUE", callback=parse_options,
              help="Option of the method (repeatable).")
@click.option("--dense", multiple=True, metavar="NAME", help="Keep this layer dense (repeatable).")
@click.option("--exact", is_flag=True, help="Keep exactly round(p_l * m_l) weights per layer.")
@click.option("--ticket", "ticket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Train the masks of this ticket file instead of pruning.")
@click.option("--epochs", type=click.IntRange(1), default=160, show_default=True, help="Paper: 160.")
@click.option("--schedule", type=click.Choice(["multistep", "cosine", "constant"]), default="multistep",
              show_default=True, help="multistep: lr x0.1 at 50% and 75% of the epochs (paper App. A.7).")
@click.option("--weights-dtype", type=click.Choice(sorted(WEIGHTS_DTYPES)), default=None,
              help="Store the ticket's floating-point weights in half precision.")
def weak(model_spec: str | None, arch: str | None, trust_pickle: bool, data_spec: str, method: str,
         density: float | None, seed: int, flow: str, method_options: dict[str, Any], dense: tuple[str, ...],
         exact: bool, ticket_path: Path | None, epochs: int, lr: float, momentum: float, weight_decay: float,
         batch_size: int, schedule: str, amp: str, device: str, train_seed: int | None, num_workers: int | None,
         checkpoint_dir: Path | None, resume: bool, out: Path | None, force: bool, weights: str,
         weights_dtype: str | None, history_path: Path | None, no_progress: bool) -> None:
    """Prune a model and train its kept weights: a weak lottery ticket (paper §2.2, App. A.7)."""
    from sparsekit.data import load_data

    main_rank = _main_rank()
    if ticket_path is None and density is None:
        raise UserError("give --density (the fraction of weights to keep, e.g. 0.01) or --ticket FILE")
    if ticket_path is not None and (density is not None or method_options or dense or exact):
        raise UserError("--ticket brings its own masks; drop --density/--option/--dense/--exact")
    _check_outputs(out, history_path, force, resume, checkpoint_dir, main_rank)
    config = sparsekit.Method(method, method_options)

    data = load_data(data_spec, trust_pickle=trust_pickle)
    net = build_model(model_spec, data, arch=arch, trust_pickle=trust_pickle, seed=seed)
    # pruned also when resuming: fit_weak then refuses a checkpoint whose masks were made with other settings
    if ticket_path is not None:
        ticket = sparsekit.apply_ticket(net, ticket_path)
    else:
        ticket = sparsekit.prune(net, config, density, seed=seed, flow=flow.lower(), dense=dense, exact=exact)
    if main_rank and not no_progress and ticket is not None:
        t = ticket.report().totals
        stdout_console().print(
            f"{data.name}: {len(data.train):,} train / {len(data.test) if data.test is not None else 0:,} test; "
            f"{t['method']} density {t['target_density']:.4g} (realised {t['realised_density']:.4g}, "
            f"{t['nonzeros']:,} of {t['params']:,} weights), flow repair added {t['edges_added']:,} edges",
            markup=False)
    history = sparsekit.fit_weak(
        net, data.train, eval_data=data.test, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
        batch_size=batch_size, schedule=schedule, amp=_AMP[amp], device=device,
        seed=seed if train_seed is None else train_seed, checkpoint_dir=checkpoint_dir, resume=resume,
        progress=not no_progress, num_workers=num_workers)
    if not main_rank:
        return
    ticket = sparsekit.ticket_of(net)
    notes = []
    if out is not None and ticket is not None:
        save_trained(ticket, out, net, weights=weights, force=force,
                     weights_dtype=WEIGHTS_DTYPES[weights_dtype] if weights_dtype else None)
        notes.append(f"weak ticket written to {out}, {size_text(out.stat().st_size)}")
    _finish(history, notes, history_path)


@fit.command("strong", context_settings={"help_option_names": ["-h", "--help"]})
@_common_options
@click.option("-d", "--density", type=DensityType(), required=True, help="Final global density of the strong ticket.")
@click.option("--er-density", type=DensityType(), default=0.5, show_default=True,
              help="Density of the ER source network (1 = plain edge-popup on a dense source).")
@click.option("--er-method", type=MethodType(), default="er-uniform", show_default=True,
              help="Layerwise scheme of the ER source (paper Table 1: uniform).")
@click.option("--final-method", type=MethodType(), default=None,
              help="Layerwise scheme of the final densities (default: --er-method).")
@click.option("--levels", type=click.IntRange(1), default=5, show_default=True, help="Annealing levels (paper: 5).")
@click.option("--epochs-per-level", type=click.IntRange(1), default=100, show_default=True, help="Paper: 100.")
@click.option("--init", type=click.Choice(["signed-kaiming-constant", "kaiming-normal", "kaiming-uniform"]),
              default="signed-kaiming-constant", show_default=True, help="Frozen weights, drawn from the seed.")
@click.option("--scale-fan/--no-scale-fan", default=True, show_default=True,
              help="Scale the init by the final ticket's fan-in (fan_in x final layer density).")
@click.option("--bias", "bias_mode", type=click.Choice(["zero", "keep"]), default="zero", show_default=True,
              help="Biases of the masked layers: zero (as the references) or keep their values; frozen either way.")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
              help="cosine: restarted at every level.")
def strong(model_spec: str | None, arch: str | None, trust_pickle: bool, data_spec: str, seed: int, flow: str,
           lr: float, momentum: float, weight_decay: float, batch_size: int, amp: str, device: str,
           train_seed: int | None, num_workers: int | None, checkpoint_dir: Path | None, resume: bool,
           out: Path | None, force: bool, weights: str, history_path: Path | None, no_progress: bool, density: float,
           er_density: float, er_method: str, final_method: str | None, levels: int, epochs_per_level: int,
           init: str, scale_fan: bool, bias_mode: str, schedule: str) -> None:
    """Find a strong lottery ticket inside an ER network with edge-popup (paper §2.1, App. A.7, A.9)."""
    from sparsekit.data import load_data

    main_rank = _main_rank()
    _check_outputs(out, history_path, force, resume, checkpoint_dir, main_rank)
    if train_seed is not None and train_seed != seed:
        raise UserError("fit strong uses one --seed for the ER mask, the weights, the scores and the data order")
    if density > er_density:
        raise UserError(f"--density {density} must not exceed --er-density {er_density}")
    data = load_data(data_spec, trust_pickle=trust_pickle)
    net = build_model(model_spec, data, arch=arch, trust_pickle=trust_pickle)
    ticket = sparsekit.fit_strong(
        net, data.train, eval_data=data.test, density=density, er_density=er_density, er_method=er_method,
        final_method=final_method, levels=levels, epochs_per_level=epochs_per_level, init=init, scale_fan=scale_fan,
        bias=bias_mode, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, schedule=schedule,
        amp=_AMP[amp], device=device, seed=seed, flow=None if flow.lower() == "none" else flow.lower(),
        checkpoint_dir=checkpoint_dir, resume=resume, progress=not no_progress, num_workers=num_workers)
    if not main_rank:
        return
    notes = [f"strong ticket density {ticket.realised_density:.4g} inside an ER source of density {er_density:g}"]
    if out is not None:
        save_trained(ticket, out, net, weights=weights, force=force)
        notes.append(f"written to {out}, {size_text(out.stat().st_size)}")
    _finish(ticket.history, notes, history_path)


@fit.command("rewire", context_settings={"help_option_names": ["-h", "--help"]})
@_common_options
@click.option("-m", "--method", type=MethodType(), default="er-balanced", show_default=True,
              help="Layerwise density scheme of the initial ER mask (see 'sparsekit methods').")
@click.option("-d", "--density", type=DensityType(), default=None,
              help="Initial global density of the ER mask. Required unless --ticket.")
@click.option("--ticket", "ticket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from the masks of this ticket file instead of pruning.")
@click.option("--final-density", type=DensityType(), default=None,
              help="Prune gradually to this density while rewiring (sparse-to-sparse, paper Table 21).")
@click.option("--rewire", "rewire_method", type=click.Choice(["rigl", "set"]), default="rigl", show_default=True,
              help="Grow by gradient magnitude (RigL) or at random (SET).")
@click.option("--update-every", type=click.IntRange(1), default=100, show_default=True,
              help="Steps between mask updates (paper App. A.13: 100).")
@click.option("--drop-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--drop-schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--stop-at", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True,
              help="Fraction of training after which masks stay fixed.")
@click.option("--no-flow-keep", "no_flow_keep", is_flag=True,
              help="Allow updates to drop the last edge of a neuron (flow is kept by default).")
@click.option("--epochs", type=click.IntRange(1), default=160, show_default=True, help="Paper: 160.")
@click.option("--schedule", type=click.Choice(["multistep", "cosine", "constant"]), default="multistep",
              show_default=True, help="Learning-rate schedule (as fit weak).")
def rewire_cmd(model_spec: str | None, arch: str | None, trust_pickle: bool, data_spec: str, seed: int, flow: str,
               lr: float, momentum: float, weight_decay: float, batch_size: int, amp: str, device: str,
               train_seed: int | None, num_workers: int | None, checkpoint_dir: Path | None, resume: bool,
               out: Path | None, force: bool, weights: str, history_path: Path | None, no_progress: bool, method: str,
               density: float | None, ticket_path: Path | None, final_density: float | None, rewire_method: str,
               update_every: int, drop_fraction: float, drop_schedule: str, stop_at: float, no_flow_keep: bool,
               epochs: int, schedule: str) -> None:
    """Train an ER network while rewiring its mask with RigL or SET (paper §3, Table 4, App. A.13)."""
    from sparsekit.data import load_data

    main_rank = _main_rank()
    if (ticket_path is None) == (density is None):
        raise UserError("give either --density (the initial ER density, e.g. 0.01) or --ticket FILE")
    _check_outputs(out, history_path, force, resume, checkpoint_dir, main_rank)
    data = load_data(data_spec, trust_pickle=trust_pickle)
    net = build_model(model_spec, data, arch=arch, trust_pickle=trust_pickle, seed=seed)
    if ticket_path is not None:
        sparsekit.apply_ticket(net, ticket_path)
    else:
        sparsekit.prune(net, method, density, seed=seed, flow=None if flow.lower() == "none" else flow.lower())
    ticket = sparsekit.rewire(
        net, data.train, eval_data=data.test, epochs=epochs, method=rewire_method, final_density=final_density,
        update_every=update_every, drop_fraction=drop_fraction, drop_schedule=drop_schedule, stop_at=stop_at,
        flow=not no_flow_keep, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
        schedule=schedule, amp=_AMP[amp], device=device, seed=seed if train_seed is None else train_seed,
        checkpoint_dir=checkpoint_dir, resume=resume, progress=not no_progress, num_workers=num_workers)
    if not main_rank:
        return
    updates = ticket.method_options["rewire"]
    notes = [f"rewired ticket density {ticket.realised_density:.4g} after {updates['steps']} steps"]
    if out is not None:
        save_trained(ticket, out, net, weights=weights, force=force)
        notes.append(f"written to {out}, {size_text(out.stat().st_size)}")
    _finish(ticket.history, notes, history_path)
