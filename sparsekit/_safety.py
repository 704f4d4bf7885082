"""Loading safety in one place: what a file may make sparsekit do before anything reads it.

Every loader (models, tickets, checkpoints, data, ONNX files) calls :func:`check_regular_file` before
opening a path, and the model loader calls :func:`inspect_model_archive` before handing a zip archive to
torch. The threat model is written down in ``SECURITY.md``:

* a device (``/dev/zero``), FIFO or socket is never read: it has no end, or never answers;
* a TorchScript archive is code (its ``__setstate__`` and methods run on load) and is treated like a
  pickle: refused without ``trust_pickle`` (CLI ``--trust-pickle``);
* a ``torch.export`` archive (``.pt2``) is loaded only when it provably cannot run code: no pickled
  payloads (``use_pickle``), custom or opaque objects, legacy pickled weight files, AOTInductor/
  ExecuTorch binaries or pre-2.7 layouts; sample inputs readable with ``weights_only=True``; every graph
  operator from a short list of pure namespaces (``aten`` minus file I/O ops, ``prims``, arithmetic
  ``_operator`` functions, ``math``, ``torch.sym_*``); every symbolic expression (which torch parses with
  ``sympy.sympify``, i.e. ``eval``) made only of numbers, operators and whitelisted names.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tokenize
import zipfile
from pathlib import Path
from typing import Any

from .errors import SparsekitError, UnsafeFileError

__all__ = ["check_regular_file", "inspect_model_archive", "check_export_archive", "escape_text",
           "MAX_NAME_LENGTH"]

MAX_NAME_LENGTH = 1024
"""Longest layer/tensor name (characters) a ticket may carry (formats/TICKET.md §9.2)."""

_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
          stat.S_IFSOCK: "a socket"}


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if it names a regular file (symlinks followed); otherwise a precise error.

    Called before any read, so a device such as ``/dev/zero`` (endless), a FIFO (blocks forever) or a
    socket is refused without being opened.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a folder.
        SparsekitError: ``path`` is a device, FIFO or socket.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise SparsekitError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{what} {p} is a folder; give a file")
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise SparsekitError(f"{what} {p} is {kind}, not a regular file; sparsekit reads only regular files")
    return p


def escape_text(text: str, limit: int = 200) -> str:
    """``text`` safe to print: control characters (terminal escapes) shown as ``\\x1b``, cut at ``limit``."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text[:limit])
    return out + (f"... ({len(text)} characters)" if len(text) > limit else "")


# --- model archives ---------------------------------------------------------------------------------------

def _zip_names(path: Path) -> list[str]:
    try:
        if not zipfile.is_zipfile(path):
            return []
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def inspect_model_archive(path: Path) -> tuple[str, list[str]]:
    """``(kind, member names)`` of a model file: kind is ``"torchscript"``, ``"export"``, ``"zip"`` or ``""``.

    ``path`` must already have passed :func:`check_regular_file`.
    """
    names = _zip_names(path)
    if not names:
        return "", []
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript", names
    if any(n.endswith("/archive_format") or (n.count("/") == 2 and "/models/" in n and n.endswith(".json"))
           or n in ("serialized_exported_program.json", "serialized_state_dict.pt") for n in names):
        return "export", names
    return "zip", names


# Operator namespaces a torch.export graph may call; anything else could be arbitrary Python.
_OPERATOR_OK = {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
                "and_", "or_", "xor", "not_", "invert", "eq", "ne", "lt", "le", "gt", "ge", "lshift", "rshift",
                "matmul", "truth"}
_ATEN_IO_OPS = {"from_file", "save", "load"}
# Names torch's deserializer may meet in a symbolic expression (sympy functions it maps, and the
# ``Symbol('s0', positive=True, integer=True)`` form it writes).
_SYMPY_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "Max", "Min", "Abs", "Symbol",
    "Integer", "Float", "Rational", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "Unequality", "Equality", "And", "Or", "Not", "True", "False", "oo", "floor",
    "ceiling", "sqrt", "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "infinite", "zero", "nonzero", "even", "odd", "extended_real", "commutative", "rational", "None",
}
_SYMBOL_NAME = re.compile(r"^[a-z]{1,8}\d{1,9}$")
_SYMBOL_STRING = re.compile(r"^(['\"])[a-z]{1,8}\d{1,9}\1$")
_EXPR_OPS = {"+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=", "&", "|",
             "~"}
_MAX_EXPR = 10_000


def _expr_is_safe(expr: str) -> bool:
    """True if ``expr`` uses only numbers, arithmetic, and whitelisted names (no attributes, no builtins)."""
    if not isinstance(expr, str) or len(expr) > _MAX_EXPR:
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    for tok in tokens:
        if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NUMBER:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", tok.string):
                return False
        elif tok.type == tokenize.NAME:
            if tok.string not in _SYMPY_NAMES and not _SYMBOL_NAME.match(tok.string):
                return False
        elif tok.type == tokenize.STRING:
            if not _SYMBOL_STRING.match(tok.string):
                return False
        elif tok.type == tokenize.OP:
            if tok.string not in _EXPR_OPS:
                return False
        else:
            return False
    return True


def _target_problem(target: str) -> str | None:
    """Why a graph node's target is refused, or None if it is a pure operator."""
    if target.startswith("torch.ops.aten.") or target.startswith("torch.ops.prims."):
        op = target.split(".")[3] if target.count(".") >= 3 else ""
        return f"the file-I/O operator {target}" if op in _ATEN_IO_OPS or "file" in op else None
    if target.startswith("_operator."):
        name = target[len("_operator."):]
        return None if name in _OPERATOR_OK else f"the Python function operator.{name}"
    if target.startswith("math.") and target.count(".") == 1:
        return None
    if re.fullmatch(r"torch\._?sym_[a-z_]+", target):
        return None
    return f"the operator {target!r} (only aten, prims, arithmetic and math operators are loaded)"


def _walk(obj: Any, found: list[tuple[str, Any]], depth: int = 0) -> None:
    if depth > 200:
        found.append(("__depth__", None))
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("expr_str", "target") and isinstance(v, str):
                found.append((k, v))
            else:
                _walk(v, found, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, found, depth + 1)


def check_export_archive(path: Path, names: list[str]) -> None:
    """Refuse a ``torch.export`` archive that could run code when ``torch.export.load`` reads it.

    Raises:
        UnsafeFileError: the archive holds a pickled or compiled payload, an unknown operator or an
            expression that is not plain arithmetic; the message names it and the opt-in.
    """
    def refuse(why: str) -> None:
        raise UnsafeFileError(
            f"{path} is a torch.export archive with {why}: loading it could execute code from the file; pass "
            "--trust-pickle (Python: trust_pickle=True) only if you trust its source, or re-export it with "
            "torch.export.save from a plain model")

    if "serialized_exported_program.json" in names or "serialized_state_dict.pt" in names:
        refuse("the pre-2.7 layout, which torch reads by unpickling")
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(roots) != 1 or any("/" not in n for n in names):
        refuse("an unexpected layout (members outside one top folder)")
    root = next(iter(roots)) + "/"
    rel = [n[len(root):] for n in names if n.startswith(root)]
    for n in rel:
        if n.startswith(("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")):
            refuse(f"compiled or external payloads ({n})")
        if (n.startswith("data/weights/") or n.startswith("data/constants/")) and n.endswith(".pt"):
            refuse(f"a legacy pickled payload ({n})")
    try:
        with zipfile.ZipFile(path) as zf:
            def read(member: str, limit: int) -> bytes:
                info = zf.getinfo(member)
                if info.file_size > limit:
                    refuse(f"a {info.file_size}-byte {member} (over the {limit}-byte limit for metadata)")
                return zf.read(member)

            for n in rel:
                if n.endswith("_config.json") and n.startswith(("data/weights/", "data/constants/")):
                    config = json.loads(read(root + n, 64 << 20))
                    entries = config.get("config", {}) if isinstance(config, dict) else None
                    if not isinstance(entries, dict):
                        refuse(f"a malformed {n}")
                    for fqn, meta in entries.items():
                        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                            refuse(f"the pickled payload {fqn!r} (use_pickle)")
                        pname = meta.get("path_name")
                        if not isinstance(pname, str) or not pname.startswith(("weight_", "tensor_")):
                            refuse(f"the non-tensor payload {fqn!r} ({pname!r})")
                elif n.startswith("data/sample_inputs/"):
                    import torch

                    try:
                        torch.load(io.BytesIO(read(root + n, 256 << 20)), weights_only=True)
                    except Exception:  # noqa: BLE001 -- torch would retry with weights_only=False
                        refuse(f"sample inputs {n} that need unpickling")
                elif n.startswith("models/") and n.endswith(".json"):
                    found: list[tuple[str, Any]] = []
                    _walk(json.loads(read(root + n, 512 << 20)), found)
                    for key, value in found:
                        if key == "__depth__":
                            refuse("a graph nested deeper than 200 levels")
                        if key == "target":
                            problem = _target_problem(value)
                            if problem:
                                refuse(problem)
                        elif not _expr_is_safe(value):
                            refuse(f"the symbolic expression {escape_text(value, 80)!r}, which is not plain "
                                   "arithmetic (torch parses it with eval)")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, OSError) as e:
        raise SparsekitError(f"cannot read torch.export archive {path}: {type(e).__name__}: {e}") from None
