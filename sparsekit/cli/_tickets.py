"""Ticket pieces shared by several commands: the model a ticket was made from, and wrong-model hints."""

from __future__ import annotations

from pathlib import Path

from sparsekit import TicketError
from sparsekit.formats.ticket_file import read_ticket_metadata

from . import UserError

__all__ = ["ticket_model", "with_model_hint"]


def ticket_model(ticket_path: Path, model: str | None, arch: str | None) -> tuple[str, str | None]:
    """``(MODEL, --arch)``: as given, or the model spec the ticket records (format 1.1 field ``model``)."""
    if model is not None:
        return model, arch
    recorded = read_ticket_metadata(ticket_path).ticket.get("model")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("spec"), str):
        raise UserError(f"give MODEL: {ticket_path} does not record the model it was made from (it was written by "
                        "Python code or an older sparsekit)")
    return recorded["spec"], arch if arch is not None else recorded.get("arch")


def with_model_hint(error: Exception, ticket_path: Path) -> Exception:
    """``error`` with the ticket's recorded model named, if it records one; CLI wording for library hints."""
    text = str(error).replace("pass strict=False", "pass --no-strict")
    try:
        recorded = read_ticket_metadata(ticket_path).ticket.get("model")
    except (TicketError, OSError):
        recorded = None
    if isinstance(recorded, dict) and isinstance(recorded.get("spec"), str):
        arch = f" --arch {recorded['arch']}" if recorded.get("arch") else ""
        text += f" (the ticket was made from {recorded['spec']}{arch})"
    return type(error)(text) if isinstance(error, TicketError) else TicketError(text)
