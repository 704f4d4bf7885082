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


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` inside a pickle: it may be passed to ``_reconstruct`` but not called,
    since ``ndarray(shape)`` would allocate whatever the file declares before any data is read."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("call numpy.ndarray(...) directly (allocates memory the file only declares)")


_NDARRAY = _NdarrayClass()
_MAX_RECONSTRUCT = 1  # numpy pickles an empty array (shape (0,)) and fills it from the data that follows


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct

    def reconstruct(cls: Any, shape: Any, typecode: Any) -> Any:
        """``_reconstruct`` for the empty placeholder numpy writes; ``__setstate__`` then checks the data
        length against the declared shape, so no size is trusted before its bytes are there."""
        if cls is not _NDARRAY and cls is not np.ndarray:
            raise _Refused(f"rebuild an array of class {type(cls).__name__}")
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(isinstance(d, int) and 0 <= d for d in dims) or int(np.prod(dims, dtype=object)) > _MAX_RECONSTRUCT:
            raise _Refused(f"allocate an uninitialised array of shape {str(shape)[:60]} before reading its data")
        return _reconstruct(np.ndarray, dims, typecode)

    return reconstruct


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
    ("numpy", "ndarray"): lambda: _NDARRAY,
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
    from .._safety import check_regular_file

    data = check_regular_file(path, what).read_bytes()
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
