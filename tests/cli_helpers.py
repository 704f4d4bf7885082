"""Helpers shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from sparsekit.cli import cli


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Invoke the CLI in-process (paths are passed as strings)."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def error_line(result: Result, exit_code: int | None = None) -> str:
    """The single ``Error: ...`` line of a failed run; fails the test if there is none or several."""
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def table_rows(output: str) -> dict[str, list[str]]:
    """Rows of a rich table by their first cell."""
    rows = {}
    for line in output.splitlines():
        if "│" in line:
            cells = [c.strip() for c in line.split("│")]
            rows[cells[0]] = cells
    return rows
