"""``sparsekit fit imp``: iterative magnitude pruning with rewinding, the paper's IMP baseline.

Example::

    sparsekit fit imp --data digits --density 0.05 --rounds 5 --epochs-per-round 10 --rewind-epoch 1 \\
        -o imp.safetensors
    sparsekit fit imp --model sparsekit:vgg16 --data cifar10:~/data --density 0.01 --rounds 25 \\
        --epochs-per-round 30 --checkpoint-dir runs/imp --resume -o vgg16-imp.safetensors
    sparsekit prune sparsekit:vgg16 --method er-from --from vgg16-imp.safetensors   # IMP (ER), paper §3

The command runs :func:`sparsekit.imp` and writes the IMP ticket (mask bits and the rewound kept
weights: the lottery ticket, ready for ``sparsekit fit weak --ticket``). It is a standalone
``click`` command; the ``fit`` group registers it with ``fit.add_command(imp)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch

from sparsekit._io import atomic_write_text

from . import UserError, stdout_console
from ._fit_common import _AMP, _check_outputs, _common_options, _main_rank, save_trained
from ._models import build_model
from ._options import WEIGHTS_DTYPES, DensityType, size_text

__all__ = ["imp"]


@click.command("imp", context_settings={"help_option_names": ["-h", "--help"]})
@_common_options
@click.option("-d", "--density", type=DensityType(), required=True, help="Final global density of the IMP ticket.")
@click.option("--rounds", type=click.IntRange(1), default=25, show_default=True,
              help="Train-prune-rewind rounds; round r prunes to density**(r/rounds) (paper App. A.7: 25 levels).")
@click.option("--epochs-per-round", type=click.IntRange(1), default=30, show_default=True,
              help="Training epochs before each pruning step (paper App. A.7: 30).")
@click.option("--rewind-epoch", type=click.IntRange(0), default=0, show_default=True,
              help="Rewind the kept weights to their values after this many epochs of the first round (0: init).")
@click.option("--schedule", type=click.Choice(["multistep", "cosine", "constant"]), default="multistep",
              show_default=True, help="Learning-rate schedule of every round (restarted each round).")
@click.option("--weights-dtype", type=click.Choice(sorted(WEIGHTS_DTYPES)), default=None,
              help="Store the ticket's floating-point weights in half precision.")
@click.pass_context
def imp(ctx: click.Context, model_spec: str | None, arch: str | None, trust_pickle: bool, data_spec: str, seed: int,
        flow: str, lr: float, momentum: float, weight_decay: float, batch_size: int, amp: str, device: str,
        train_seed: int | None, num_workers: int | None, checkpoint_dir: Path | None, resume: bool, out: Path | None,
        force: bool, weights: str, history_path: Path | None, no_progress: bool, density: float, rounds: int,
        epochs_per_round: int, rewind_epoch: int, schedule: str, weights_dtype: str | None) -> None:
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin; the paper's IMP baseline, §3, App. A.7).

    Each round trains the network, removes the smallest weights globally and rewinds the rest; the
    ticket written to --out holds the final masks and the rewound kept weights. --seed seeds the
    model's initialisation and, unless --train-seed, the data order.
    """
    from sparsekit.data import load_data
    from sparsekit.pruners import imp as run_imp

    if ctx.get_parameter_source("flow") is not click.core.ParameterSource.DEFAULT:
        raise UserError("--flow does not apply to fit imp: IMP draws no ER mask")
    if rewind_epoch > epochs_per_round:
        raise UserError(f"--rewind-epoch {rewind_epoch} must not exceed --epochs-per-round {epochs_per_round}")
    main_rank = _main_rank()
    _check_outputs(out, history_path, force, resume, checkpoint_dir, main_rank)
    data = load_data(data_spec, trust_pickle=trust_pickle)
    torch.manual_seed(seed)  # the initialisation (a resumed run reloads it from the checkpoint folder)
    net = build_model(model_spec, data, arch=arch, trust_pickle=trust_pickle)
    ticket = run_imp(
        net, data.train, density, rounds, epochs_per_round, rewind_epoch=rewind_epoch, eval_data=data.test, lr=lr,
        momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, schedule=schedule, device=device,
        amp=_AMP[amp], seed=seed if train_seed is None else train_seed, checkpoint_dir=checkpoint_dir, resume=resume,
        progress=not no_progress, num_workers=num_workers)
    if not main_rank:
        return
    histories = ticket.history  # type: ignore[attr-defined]
    t = ticket.report().totals
    notes = [f"IMP ticket at density {density:g} after {rounds} rounds ({t['nonzeros']:,} of {t['params']:,} weights)"]
    last = next((h[-1] for h in reversed(histories) if h), None)
    if last is not None and last.eval_acc is not None:
        notes.insert(0, f"last round's test accuracy {last.eval_acc:.4f} (before its pruning)")
    if out is not None:
        save_trained(ticket, out, net, weights=weights, force=force,
                     weights_dtype=WEIGHTS_DTYPES[weights_dtype] if weights_dtype else None)
        notes.append(f"written to {out}, {size_text(out.stat().st_size)}")
    if history_path is not None:
        rows: list[dict[str, Any]] = [{"round": r, **s} for r, h in enumerate(histories, 1) for s in h.to_dicts()]
        atomic_write_text(history_path, json.dumps(rows, indent=2) + "\n", overwrite=force)
        notes.append(f"history written to {history_path}")
    stdout_console().print("; ".join(notes), markup=False)
