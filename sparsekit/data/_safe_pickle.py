"""A pickle loader that can rebuild numpy arrays and builtin containers and nothing else.

Used for the python version of CIFAR (dicts of ``bytes``/``str``/``int``/``list`` and one uint8
numpy array). Any other global a file asks for (``os.system``, ``builtins.eval``, ...) is refused
with :class:`~sparsekit.errors.UnsafeFileError` before it is imported, so no code from the file runs.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SparsekitError, UnsafeFileError

__all__ = ["safe_load", "ALLOWED_GLOBALS"]


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer() -> Callable[..., Any]:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, restricted to latin-1 text codecs."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("iso8859-1", "utf-8"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return codecs.encode(text, encoding, errors)


# (module, name) -> factory returning the object. Exactly what numpy needs to rebuild an ndarray:
# ``_reconstruct(ndarray, shape, typecode)`` + ``dtype`` (protocols 0-4), ``_frombuffer`` (protocol 5),
# and ``_codecs.encode`` (how protocol 2 writes bytes under Python 3).
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _Refused(pickle.UnpicklingError):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        factory = ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise _Refused(f"import {module}.{name}")
        return factory()

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise _Refused(f"resolve the persistent id {repr(pid)[:60]}")


def safe_load(path: Path, *, what: str) -> Any:
    """Unpickle ``path`` allowing only numpy-array globals.

    Raises:
        UnsafeFileError: the file asks for any other global (the payload is never imported or called).
        SparsekitError: the file is not a readable pickle.
    """
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise UnsafeFileError(
            f"{path} is not a genuine {what}: unpickling it would {e.what}, and only numpy array "
            "reconstruction is allowed. Refusing to load it (this check applies even with "
            "trust_pickle=True); use the official files, ideally the binary version.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeError) as e:
        raise SparsekitError(f"{path} is not a readable {what} (truncated or corrupt pickle: {e})") from e
