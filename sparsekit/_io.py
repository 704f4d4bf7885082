"""Atomic file writes: nothing the user had is lost, and no half-written file is left, if writing fails.

Every file sparsekit writes (tickets, checkpoints, ONNX files, reports) goes through
:func:`atomic_write_bytes`:

* the bytes go to a temporary file in the target's folder, named ``.NAME.sk<host>-<pid>-<random>.tmp``,
  are flushed to disk, and then take the target's name in one step: ``os.replace`` when replacing is
  allowed, ``os.link`` (which fails if the name exists) when it is not, so of two processes creating
  the same new file exactly one wins and the other gets :class:`FileExistsError`;
* a target that exists and is not a regular file (a device, FIFO, socket or folder) is never replaced,
  even with ``overwrite=True``;
* temporary files of this naming left behind by a killed writer (same host, process no longer alive)
  are deleted on the next write to the same name, and by :func:`clean_stale_temps` (called when a
  training run resumes).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "clean_stale_temps", "check_writable_target"]

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_LEGACY_AGE_S = 3600  # temp files of the naming before pids were recorded: deleted when this old


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.sk{_HOST}-{os.getpid()}-"


def check_writable_target(path: str | os.PathLike, *, overwrite: bool, what: str = "") -> Path:
    """Refuse a target that must not be written: an existing file without ``overwrite``, or anything
    that exists and is not a regular file (device, FIFO, socket, folder), whatever ``overwrite`` says.

    Raises:
        FileExistsError, IsADirectoryError, FileNotFoundError (missing folder), ValueError (not a regular file).
    """
    path = Path(path)
    label = f"{what} {path}".strip()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{label} is a folder; give a file name")
        if not stat.S_ISREG(st.st_mode):
            from .errors import SparsekitError

            raise SparsekitError(f"{label} exists and is not a regular file (a device, FIFO or socket); sparsekit "
                                 "never replaces those, even with --force; give a file name")
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {parent} does not exist; create it first")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer left next to ``path``; returns those deleted.

    Only files of this module's naming are touched: ``.NAME.sk<host>-<pid>-*.tmp`` written on this host
    by a process that no longer runs, and ``.NAME.XXXXXXXX.tmp`` (the naming of sparsekit < 0.x, no pid
    recorded) once they are an hour old.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    mine = f".{path.name}.sk{_HOST}-"
    legacy = f".{path.name}."
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.endswith(".tmp") or not name.startswith(legacy):
            continue
        stale = False
        if name.startswith(mine):
            pid_text = name[len(mine):].split("-", 1)[0]
            stale = pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
        elif ".sk" not in name[len(legacy):]:
            middle = name[len(legacy):-len(".tmp")]
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_AGE_S
            except OSError:
                old = False
            stale = len(middle) == 8 and middle.replace("_", "").isalnum() and old
        if stale and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); never leaves a partial file.

    Raises:
        FileExistsError: ``path`` exists (or another process created it meanwhile) and not ``overwrite``.
        SparsekitError: ``path`` exists and is not a regular file.
        PermissionError: the folder is not writable (the message names ``path``, not the temporary file).
    """
    path = check_writable_target(path, overwrite=overwrite)
    parent = path.parent if str(path.parent) else Path(".")
    clean_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=parent)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror} (folder {parent})") from None
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would (or keep the old one)
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        _fsync_dir(parent)
    except OSError as e:
        _unlink(tmp)
        if isinstance(e, FileExistsError) or e.filename not in (tmp, None):
            raise
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def _link_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if that name is free, atomically; ``tmp`` is removed."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists (another process may have just written it); pass overwrite=True "
                              "(CLI: --force) to replace it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # no hard links on this filesystem: reserve the name exclusively, then move the data over it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise FileExistsError(f"{path} exists (another process may have just written it); pass "
                                  "overwrite=True (CLI: --force) to replace it") from None
        os.replace(tmp, path)
        return
    _unlink(tmp)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
