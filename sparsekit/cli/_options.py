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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import torch
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

import sparsekit
from sparsekit._registry import method_infos
from sparsekit.densities import validate_density
from sparsekit.errors import UnknownMethodError

from . import UserError
from ._models import parse_kwargs

__all__ = ["MAX_ROWS", "SHOWN_AT_ENDS", "force_option", "json_option", "all_option", "check_out", "add_rows",
           "size_text", "Col", "print_table", "fitted_table", "shorten_left",
           "MethodType", "DensityType", "parse_options", "WEIGHTS_DTYPES"]

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
    if "=" in out.name and out.name.split("=", 1)[0].isidentifier():
        raise ValueError(f"{what} {out.name!r} looks like KEY=VALUE, not a file name: method options go to "
                         f"-O/--option KEY=VALUE (e.g. -O redistribute=False); {what} names the output file")
    if out.is_dir():
        raise IsADirectoryError(f"{what} {out} is a folder; give a file name")
    if out.exists() and not out.is_file():
        raise ValueError(f"{what} {out} exists and is not a regular file (a device, FIFO or socket); it is "
                               "never replaced, even with --force; give a file name")
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
            import difflib

            names = [n for i in method_infos() for n in (i.name, *i.aliases)]
            close = difflib.get_close_matches(str(value).lower(), names, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UserError(f"--method: unknown method {value!r}; {hint}valid methods: {_method_names()} "
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


# --- tables that fit the terminal ------------------------------------------------------------------------

_GAP = 3  # " │ " between columns (tables have no outer edge)


@dataclass(frozen=True)
class Col:
    """A column of :func:`print_table`.

    Attributes:
        header: the heading.
        right: right-justified (numbers).
        drop: columns are dropped in increasing order of ``drop`` (1 first) while the table is wider than
            the console; 0 never drops.
        name: the name column, shortened from the left (``…layer4.1.conv2.weight``) when still too wide.
    """

    header: str
    right: bool = True
    drop: int = 0
    name: bool = False


def fitted_table() -> Table:
    """The table style of every command: no outer edge, no padding at the edges."""
    return Table(show_edge=False, pad_edge=False)


def shorten_left(text: str, width: int) -> str:
    """``text`` cut from the left to ``width`` cells, with a leading ``…`` when cut."""
    if cell_len(text) <= width:
        return text
    out = text
    while out and cell_len(out) > width - 1:
        out = out[1:]
    return "…" + out


def _cell(x: str | Text) -> Text:
    return x if isinstance(x, Text) else Text(x)


def print_table(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[str | Text]], *,
                total: Sequence[str | Text] | None = None, show_all: bool = False, min_name: int = 20) -> list[str]:
    """Print a table no wider than ``console``: low-value columns go first, then names are shortened.

    Long tables show the first and last :data:`SHOWN_AT_ENDS` rows unless ``show_all``. Returns the
    headers of the columns that were dropped (the caller may say so).
    """
    shown: list[Sequence[str | Text]] = list(rows)
    hidden = 0
    if len(rows) > MAX_ROWS and not show_all:
        hidden = len(rows) - 2 * SHOWN_AT_ENDS
        shown = list(rows[:SHOWN_AT_ENDS]) + list(rows[-SHOWN_AT_ENDS:])
    all_rows = shown + ([total] if total is not None else [])
    widths = [max([cell_len(c.header)] + [cell_len(_cell(r[i]).plain) for r in all_rows]) for i, c in enumerate(cols)]
    keep = list(range(len(cols)))
    limit = console.width

    def width_of(idx: list[int]) -> int:
        return sum(widths[i] for i in idx) + _GAP * (len(idx) - 1)

    for i in sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: cols[i].drop):
        if width_of(keep) <= limit:
            break
        keep.remove(i)
    name_width = None
    names = [i for i in keep if cols[i].name]
    if width_of(keep) > limit and names:
        n = names[0]
        name_width = max(min_name, widths[n] - (width_of(keep) - limit))
    table = fitted_table()
    for i in keep:
        c = cols[i]
        table.add_column(c.header, justify="right" if c.right else "left", no_wrap=True,
                         width=name_width if (c.name and name_width) else None, overflow="ellipsis")

    def cells(r: Sequence[str | Text]) -> list[Text]:
        out = []
        for i in keep:
            cell = _cell(r[i])
            if cols[i].name and name_width is not None and cell_len(cell.plain) > name_width:
                cell = Text(shorten_left(cell.plain, name_width), style=cell.style)
            out.append(cell)
        return out

    body = [cells(r) for r in shown]
    for j, r in enumerate(body):
        if hidden and j == SHOWN_AT_ENDS:
            table.add_row(Text(f"… {hidden} more layers (--all shows every layer)", style="dim"))
        table.add_row(*r, end_section=total is not None and j == len(body) - 1)
    if total is not None:
        table.add_row(*cells(total))
    console.print(table)
    return [cols[i].header for i in range(len(cols)) if i not in keep]
