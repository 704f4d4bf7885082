"""Options and steps shared by the ``fit`` commands (``fit weak``, ``fit strong``, ``fit rewire``, ``fit imp``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from . import UserError, stdout_console
from ._options import check_out, force_option

__all__: list[str] = []

_AMP = {"auto": "auto", "bf16": "bf16", "fp16": "fp16", "none": None}


def _common_options(fn):
    """Options shared by ``fit weak`` and ``fit strong`` (model, data, optimiser, device, checkpoints, output)."""
    for opt in reversed([
        click.option("--model", "model_spec", metavar="SPEC", default=None,
                     help="sparsekit:NAME (vgg16, vgg19, resnet18, resnet50, resnet20, resnet110, mlp; num_classes "
                          "is taken from the data), torchvision:NAME, package.module:factory or a model file. "
                          "Default for digits: sparsekit:mlp (64-512-512-10)."),
        click.option("--arch", metavar="SPEC", default=None, help="Architecture for a state_dict --model file."),
        click.option("--trust-pickle", is_flag=True,
                     help="Allow pickled model files and pickled CIFAR batches that fail the official checksums."),
        click.option("--data", "data_spec", metavar="SPEC", required=True,
                     help="cifar10:ROOT, cifar100:ROOT, tiny-imagenet:ROOT, digits, or synthetic[:n=...]. Nothing "
                          "is downloaded."),
        click.option("-s", "--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, metavar="INT",
                     help="Seed of the masks and of the initial weights of built models (and of training unless "
                          "--train-seed)."),
        click.option("--flow", type=click.Choice(["repair", "resample", "none"], case_sensitive=False),
                     default="repair", show_default=True, help="Flow preservation of the ER mask."),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True),
        click.option("--momentum", type=click.FloatRange(0), default=0.9, show_default=True),
        click.option("--weight-decay", type=click.FloatRange(0), default=5e-4, show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Per process."),
        click.option("--amp", type=click.Choice(sorted(_AMP)), default="auto", show_default=True,
                     help="auto: bf16 on GPUs that support it, off on the CPU."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--train-seed", type=click.IntRange(0, 2**63 - 1), default=None, metavar="INT",
                     help="Seed of the data order and augmentation (default: --seed)."),
        click.option("--num-workers", type=click.IntRange(0), default=None, help="DataLoader workers (default: auto)."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Write checkpoint.pt and history.json here after every epoch."),
        click.option("--resume", is_flag=True, help="Continue the run in --checkpoint-dir (exactly)."),
        click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
                     help="Write the ticket to FILE.safetensors."),
        force_option("Replace FILE given to --out if it exists."),
        click.option("--weights", type=click.Choice(["kept", "none"]), default="kept", show_default=True,
                     help="What the --out ticket holds besides the masks: kept: the trained weights and the other "
                          "state_dict entries, a complete model ('sparsekit apply' rebuilds it; fit strong stores "
                          "the state and rebuilds its frozen weights from the seed); none: the masks only."),
        click.option("--history", "history_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Write the per-epoch history as JSON to this file."),
        click.option("--no-progress", is_flag=True, help="No progress bar and no per-epoch lines."),
    ]):
        fn = opt(fn)
    return fn


def _check_outputs(out: Path | None, history_path: Path | None, force: bool, resume: bool,
                   checkpoint_dir: Path | None, main_rank: bool) -> None:
    if resume and checkpoint_dir is None:
        raise UserError("--resume needs --checkpoint-dir (the folder of the interrupted run)")
    if out is not None:
        if out.suffix.lower() != ".safetensors":
            raise UserError(f"--out {out}: a ticket file must end in .safetensors")
        if main_rank:
            check_out(out, force)
    if history_path is not None and main_rank:
        check_out(history_path, force, what="--history")


def _finish(history: Any, notes: list[str], history_path: Path | None) -> None:
    if history_path is not None:
        history.to_json(history_path)
        notes.append(f"history written to {history_path}")
    last = history[-1] if history else None
    if last is not None:
        n = len(history)
        if last.eval_acc is not None:
            acc = f"last test accuracy {last.eval_acc:.4f}"
            scored = [(h.eval_acc, i) for i, h in enumerate(history) if h.eval_acc is not None]
            best_acc, best_i = max(scored, key=lambda s: (s[0], -s[1]))
            if best_i != n - 1:
                acc += f", best {best_acc:.4f} in epoch {best_i + 1} (the ticket holds the last epoch's model)"
        else:
            acc = f"last train accuracy {last.train_acc:.4f}"
        stdout_console().print(f"trained {n} epoch{'s' if n != 1 else ''}: {acc}" + "".join(f"; {x}" for x in notes),
                               markup=False)


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def save_trained(ticket: Any, out: Path, net: Any, *, weights: str, force: bool, weights_dtype: Any = None) -> None:
    """Write the trained ticket to ``out``: a complete model unless ``weights == "none"`` (masks only)."""
    import sparsekit

    from ._models import spec_of

    ticket.model_spec = {"spec": spec_of(net, "sparsekit:mlp"), "arch": None}
    if weights == "none":
        sparsekit.save_ticket(ticket, out, overwrite=force)
        return
    kind = "state" if getattr(ticket, "init", None) is not None else "kept"  # strong: frozen weights from the seed
    sparsekit.save_ticket(ticket, out, weights=kind, model=net, overwrite=force, weights_dtype=weights_dtype)
