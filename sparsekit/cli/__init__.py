"""The ``sparsekit`` command line, a thin layer over the library.

Commands live in one module each (``sparsekit/cli/prune.py``, ``sparsekit/cli/methods.py``) and are
imported when invoked, so ``sparsekit --help`` stays quick. Mistakes in what the user asked for
(:class:`~sparsekit.SparsekitError` and other ``ValueError``, ``TypeError``, ``OSError`` such as a
missing file, ``ImportError`` for a missing optional dependency) print one line ``Error: <message>``
to stderr and exit with status 1 (a message written on several lines, such as a list of accepted
forms, keeps its lines, indented under the ``Error:`` line); so do usage errors (a missing argument, an
unknown option or command, a bad option value), with a pointer to the command's ``--help``. Set
``SPARSEKIT_DEBUG=1`` to get the full traceback (and click's usage text) instead.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console

from sparsekit import __version__

__all__ = ["cli", "main", "SparsekitGroup", "UserError", "stdout_console", "terminal_width", "debug_enabled",
           "USER_ERRORS"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError, KeyError)
"""Exceptions shown as one line; ``SparsekitError`` is a ``ValueError``, ``UnpicklingError`` is not caught."""

_PIPE_WIDTH = 1000

_COMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("sparsekit.cli.prune", "prune"),
    "methods": ("sparsekit.cli.methods", "methods"),
    "info": ("sparsekit.cli.ticket", "info"),
    "apply": ("sparsekit.cli.ticket", "apply"),
    "verify": ("sparsekit.cli.ticket", "verify"),
    "fit": ("sparsekit.cli.fit", "fit"),
    "export": ("sparsekit.cli.export", "export"),
    "onnx-check": ("sparsekit.cli.export", "onnx_check"),
    "theory": ("sparsekit.cli.theory", "theory"),
    "sparsity": ("sparsekit.cli.sparsity", "sparsity"),
    "plot": ("sparsekit.cli.plot", "plot"),
    "reproduce": ("sparsekit.cli.reproduce", "reproduce"),
}


def debug_enabled() -> bool:
    """Whether ``SPARSEKIT_DEBUG`` asks for tracebacks (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get("SPARSEKIT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


class UserError(click.ClickException):
    """A user mistake: click prints ``Error: <message>`` on one line and exits with status 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(error_text(message))


def error_text(message: str) -> str:
    """``message`` as the CLI prints it after ``Error:``: a message written on several lines (a list of
    accepted forms) keeps them (and their alignment), indented under the first; colour codes are removed."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in message.strip().splitlines()]
    return "\n  ".join(line for line in lines if line.strip())


def one_line(message: str) -> str:
    """``message`` without colour codes and with all whitespace runs (newlines too) as single spaces."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", message).split())


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1 and type(error).__str__ is KeyError.__str__:
        text = str(error.args[0])  # KeyError quotes its message
    else:
        text = str(error)
    return error_text(text) or type(error).__name__


class SparsekitGroup(click.Group):
    """A click group that imports its commands on demand and turns user errors into one line.

    The translation happens once here, around every command: exceptions in :data:`USER_ERRORS`
    become :class:`UserError` (exit status 1) unless :func:`debug_enabled`, in which case they
    propagate with their traceback. Anything else (a bug) always propagates.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module_name), attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as error:  # one line and exit status 1, like every other mistake
            if debug_enabled():
                raise
            where = error.ctx.command_path if error.ctx is not None else "sparsekit"
            raise UserError(f"{error.format_message()} (see '{where} --help')") from error
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except USER_ERRORS as error:
            if debug_enabled():
                raise
            raise UserError(_describe(error)) from error


def terminal_width() -> int | None:
    """Columns of the user's terminal: ``COLUMNS`` if set, else the size of stdout or stderr if either is a
    terminal (so ``sparsekit prune ... | less`` fits the screen), else None."""
    cols = os.environ.get("COLUMNS", "").strip()
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.isatty():
                return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            continue
    return None


def stdout_console() -> Console:
    """A rich console on click's stdout (works under ``CliRunner`` and in pipes).

    Output is never wider than the terminal (:func:`terminal_width`); tables drop low-value columns and
    shorten names from the left to fit. Without any terminal (files, tests) lines are as long as their
    content. Rich drops colours without a terminal by itself.
    """
    stream = sys.stdout  # CliRunner swaps sys.stdout; click.get_text_stream is deprecated in click 8.5
    return Console(file=stream, width=terminal_width() or _PIPE_WIDTH, highlight=False, soft_wrap=False)


@click.group(cls=SparsekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="sparsekit")
def cli() -> None:
    """Sparse neural networks from random Erdős–Rényi masks.

    Set SPARSEKIT_DEBUG=1 to see full tracebacks.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sparsekit`` console script and of ``python -m sparsekit``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="sparsekit")
