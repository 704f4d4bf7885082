"""``sparsekit methods``: the registered layerwise density schemes, their aliases and options."""

from __future__ import annotations

import inspect
import json
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from sparsekit._registry import MethodInfo, method_infos

from . import stdout_console

__all__ = ["methods", "method_options"]


def method_options(info: MethodInfo) -> dict[str, Any]:
    """``{option: default}`` of a method (options without a default map to ``inspect.Parameter.empty``)."""
    params = inspect.signature(info.densities).parameters
    return {name: params[name].default for name in info.options}


def _options_text(info: MethodInfo) -> str:
    parts = [name if default is inspect.Parameter.empty else f"{name}={default!r}"
             for name, default in method_options(info).items()]
    return ", ".join(parts) or "-"


@click.command("methods", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the methods as JSON.")
def methods(as_json: bool) -> None:
    """List the methods 'sparsekit prune --method' accepts, with aliases and options."""
    infos = method_infos()
    if as_json:
        click.echo(json.dumps([{
            "name": i.name, "aliases": list(i.aliases), "description": i.description,
            "options": {k: (None if v is inspect.Parameter.empty else v) for k, v in method_options(i).items()},
        } for i in infos], indent=2, default=repr))
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("method", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    table.add_column("options (default)", no_wrap=True)
    table.add_column("description")
    for i in infos:
        table.add_row(Text(i.name, style="bold"), Text(", ".join(i.aliases) or "-"), Text(_options_text(i)),
                      Text(i.description))
    console = stdout_console()
    console.print(table)
    console.print("use: sparsekit prune MODEL --method NAME [--density P] [-O OPTION=VALUE ...]", markup=False)
