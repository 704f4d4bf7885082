"""Exceptions raised by sparsekit. All derive from :class:`SparsekitError` (a ``ValueError``)."""

from __future__ import annotations

__all__ = ["SparsekitError", "UnsupportedLayerError", "UnknownMethodError", "NoPrunableLayersError",
           "UnsafeFileError"]


class SparsekitError(ValueError):
    """A problem with what the user asked for; the message names it and the fix."""


class UnsupportedLayerError(SparsekitError):
    """A module has a weight whose axes sparsekit cannot read."""


class UnknownMethodError(SparsekitError, KeyError):
    """A method name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoPrunableLayersError(SparsekitError):
    """The model (after filtering) has no weight that can be masked."""


class UnsafeFileError(SparsekitError):
    """A file would need unpickling (arbitrary code execution) and the user did not opt in."""
