"""Exceptions raised when reading or writing ticket files and their mask payloads."""

from __future__ import annotations

from ..errors import SparsekitError

__all__ = ["TicketError"]


class TicketError(SparsekitError):
    """A ticket file or mask payload is malformed, inconsistent or cannot be encoded.

    Decoders raise this (never a bare numpy ``IndexError``/``ValueError``) for any bytes that are
    not a valid encoding; the message says which check failed.
    """
