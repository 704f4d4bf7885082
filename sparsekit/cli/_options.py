"""Options and helpers shared by several commands, defined once.

* :func:`force_option`: ``--force`` (alias ``--overwrite``), replace an existing output file;
* :func:`json_option`, :func:`all_option`: machine-readable output and long tables;
* :func:`check_out`: refuse an existing output file (without ``--force``) or a missing folder before
  any slow work;
* :func:`add_rows`: rows of a rich table, long ones cut in the middle;
* :func:`size_text`: ``"12,345 bytes (12.1 KiB)"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import torch
from rich.table import Table
from rich.text import Text

import sparsekit
from sparsekit._registry import method_infos
from sparsekit.densities import validate_density
from sparsekit.errors import UnknownMethodError

from . import UserError
from ._models import parse_kwargs

__all__ = ["MAX_ROWS", "SHOWN_AT_ENDS", "force_option", "json_option", "all_option", "check_out", "add_rows",
           "size_text", "MethodType", "DensityType", "parse_options", "WEIGHTS_DTYPES"]

MAX_ROWS = 60
"""Tables with more rows show the first and last :data:`SHOWN_AT_ENDS` rows unless ``--all``."""
SHOWN_AT_ENDS = 25
WEIGHTS_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""``--weights-dtype`` choices."""

F = TypeVar("F", bound=Callable[..., Any])


def force_option(help_text: str) -> Callable[[F], F]:
    """``--force`` / ``--overwrite`` (the same flag), passed as ``force``."""
    return click.option("--force", "--overwrite", "force", is_flag=True, help=help_text)


def json_option(help_text: str) -> Callable[[F], F]:
    """``--json``, passed as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def all_option() -> Callable[[F], F]:
    """``--all``, passed as ``show_all``: every row of long tables."""
    return click.option("--all", "show_all", is_flag=True, help=f"Show every layer (otherwise at most {MAX_ROWS}).")


def check_out(out: Path, force: bool, *, what: str = "--out") -> None:
    """Fail early when ``out`` exists (and ``force`` is false), is a folder, or its folder is missing."""
    if out.is_dir():
        raise IsADirectoryError(f"{what} {out} is a folder; give a file name")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force (or --overwrite) to replace it")
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} of {what} {out} does not exist; create it first")


def add_rows(table: Table, rows: Sequence[Sequence[Text]], *, show_all: bool) -> None:
    """Add ``rows`` to ``table`` (at most :data:`MAX_ROWS` unless ``show_all``), closing the section."""
    if len(rows) > MAX_ROWS and not show_all:
        hidden = len(rows) - 2 * SHOWN_AT_ENDS
        for r in rows[:SHOWN_AT_ENDS]:
            table.add_row(*r)
        table.add_row(Text(f"… {hidden} more layers (--all shows every layer)", style="dim"))
        rows = rows[-SHOWN_AT_ENDS:]
    for i, r in enumerate(rows):
        table.add_row(*r, end_section=i == len(rows) - 1)


def size_text(nbytes: int) -> str:
    """``"2,004 bytes (2.0 KiB)"``; plain ``"512 bytes"`` below one KiB."""
    text = f"{nbytes:,} bytes"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{text} ({nbytes / scale:.1f} {unit})"
    return text


def _method_names() -> str:
    return ", ".join(f"{i.name} ({', '.join(i.aliases)})" if i.aliases else i.name for i in method_infos())


class MethodType(click.ParamType):
    """A registered method name or alias, resolved to its canonical name; choices come from the registry.

    An unknown name is a user error (one line, exit status 1), not a usage error.
    """

    name = "method"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return sparsekit.get_method(str(value)).name
        except UnknownMethodError:
            raise UserError(f"--method: unknown method {value!r}; valid methods: {_method_names()} "
                            "(see 'sparsekit methods')") from None

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(sparsekit.list_methods()) + "]"

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        names = [n for i in method_infos() for n in (i.name, *i.aliases)]
        return [CompletionItem(n) for n in names if n.startswith(incomplete.lower())]


class DensityType(click.ParamType):
    """A global density in (0, 1], checked by :func:`sparsekit.densities.validate_density`."""

    name = "density"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"--density: {value!r} is not a number; give the fraction of weights to keep, "
                            "in (0, 1], e.g. 0.01") from None
        try:
            return validate_density(number)
        except ValueError as e:
            raise UserError(f"--density: {e}") from None


def parse_options(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, Any]:
    """Click callback of ``-O/--option KEY=VALUE`` (repeatable): the options as one dict."""
    options: dict[str, Any] = {}
    for value in values:
        try:
            parsed = parse_kwargs(value, what="--option")
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from e
        options.update(parsed)
    return options
