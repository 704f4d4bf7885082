"""Loading models for the command line: one ``MODEL`` string names a builder or a file.

Accepted model specs (:func:`load_model`):

* ``sparsekit:NAME[:KEY=VALUE,...]``, e.g. ``sparsekit:vgg19:num_classes=100``: the paper's networks
  from :mod:`sparsekit.models` (``sparsekit.models.get_model(NAME, **kwargs)``; names in
  ``sparsekit.models.list_models()``).
* ``torchvision:NAME[:KEY=VALUE,...]``, e.g. ``torchvision:resnet18:num_classes=10``. Weights are
  never downloaded: ``weights`` (and ``weights_backbone``) default to None and other values are refused.
* ``package.module:factory[:KEY=VALUE,...]``: ``factory(**kwargs)`` must return an ``nn.Module``; the
  current folder is searched first, like ``python -m``.
* a file:

  - a TorchScript archive (``torch.jit.save``), loaded with ``torch.jit.load`` only with
    ``trust_pickle=True`` (CLI ``--trust-pickle``): TorchScript is code and runs on load;
  - a ``torch.export`` archive (``.pt2``), loaded with ``torch.export.load(path).module()`` after
    :func:`sparsekit._safety.check_export_archive` proved it cannot run code (no pickled payloads,
    only pure operators; SECURITY.md); its Linear/Conv weights are recognised from the exported graph
    (:func:`export_layer_layouts`);
  - a state_dict (``torch.save(model.state_dict())``, possibly under a ``"state_dict"`` or ``"model"``
    key), loaded with ``torch.load(weights_only=True)`` into the architecture given by ``arch``
    (CLI ``--arch SPEC``), strictly;
  - a pickled module (``torch.save(model)``): refused with :class:`~sparsekit.UnsafeFileError`, since
    unpickling it runs arbitrary code from the file, unless ``trust_pickle=True`` (CLI ``--trust-pickle``).

Values in ``KEY=VALUE`` lists are read as Python literals (``10``, ``None``, ``(1, 2)``, ``'a'``);
anything else is kept as a string. Commas inside brackets or quotes do not split.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import math
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import torch
from torch import nn

from sparsekit._safety import check_export_archive, check_regular_file, inspect_model_archive
from sparsekit.errors import SparsekitError, UnsafeFileError
from sparsekit.layers import LayerLayout, declare_layouts

from . import UserError

__all__ = ["load_model", "build_model", "spec_of",
           "check_model_fits_data", "checkpoint_tensors", "read_state_dict_file",
           "parse_kwargs", "export_layer_layouts", "model_options", "SPEC_FORMS"]

SPEC_FORMS = ("sparsekit:NAME[:KEY=VALUE,...], torchvision:NAME[:KEY=VALUE,...], "
              "package.module:factory[:KEY=VALUE,...], or a model file "
              "(torch.export .pt2, a state_dict (read from its shapes, or loaded into --arch), "
              "TorchScript or a pickled module with --trust-pickle)")

_FACTORY_SPEC = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?::(?P<kwargs>.*))?$", re.S)
_MODEL_SUFFIXES = {".pt", ".pth", ".pt2", ".safetensors", ".bin", ".ckpt", ".tar", ".pkl", ".jit", ".torchscript"}
_NO_DOWNLOAD = ("weights", "weights_backbone")
_MAX_LISTED = 5
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")

F = TypeVar("F", bound=Callable[..., Any])


def model_options(fn: F) -> F:
    """The ``MODEL`` argument and the ``--arch``/``--trust-pickle`` options, shared by every command."""
    fn = click.option(
        "--trust-pickle", is_flag=True,
        help="Allow loading a pickled module (torch.save(model)), a TorchScript archive or a .pt2 archive with "
             "pickled payloads; this runs code from the file, so only use it for files you trust.")(fn)
    fn = click.option(
        "--arch", metavar="SPEC", default=None,
        help="Architecture for a state_dict file: sparsekit:NAME, torchvision:NAME[:K=V,...] or "
             "package.module:factory (optional: without it the layer kinds are read from the tensors).")(fn)
    fn = click.argument("model", metavar="MODEL")(fn)
    return fn


def parse_kwargs(text: str, *, what: str = "keyword arguments") -> dict[str, Any]:
    """``"a=1,b=None,c=[1, 2],d=abc"`` as ``{"a": 1, "b": None, "c": [1, 2], "d": "abc"}``.

    Values are Python literals where ``ast.literal_eval`` reads them, strings otherwise.

    Raises:
        ValueError: an item is not ``KEY=VALUE`` with an identifier as key, or a key repeats.
    """
    out: dict[str, Any] = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{what}: expected KEY=VALUE (e.g. num_classes=10), got {item.strip()!r}")
        if key in out:
            raise ValueError(f"{what}: {key!r} is given twice")
        out[key] = _literal(raw.strip())
    return out


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are outside brackets and quotes; empty items are dropped."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [s for s in items if s.strip()]


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def load_model(spec: str, *, arch: str | None = None, trust_pickle: bool = False,
               defaults: dict[str, Any] | None = None) -> nn.Module:
    """The model named by ``spec`` (see the module docstring for the accepted forms), on the CPU.

    Args:
        spec: ``sparsekit:NAME[:K=V,...]``, ``torchvision:NAME[:K=V,...]``,
            ``package.module:factory[:K=V,...]`` or a file path.
        arch: the architecture (a spec of the first three forms) a state_dict file is loaded into.
        trust_pickle: allow unpickling a full module from a file; this executes code from the file.
        defaults: keyword arguments for ``sparsekit:`` models that the spec does not set (the CLI fills
            ``num_classes`` and the input size from the data).

    Raises:
        FileNotFoundError: ``spec`` looks like a file that does not exist.
        UnsafeFileError: the file is a pickle and ``trust_pickle`` is False.
        ImportError: torchvision (``pip install "sparsekit[vision]"``) or the factory's module is missing.
        SparsekitError: anything else wrong with ``spec``, ``arch`` or the file; the message says what.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SparsekitError(f"model spec must be a non-empty string; accepted forms: {SPEC_FORMS}")
    if not isinstance(trust_pickle, bool):
        raise TypeError(f"trust_pickle must be True or False, got {trust_pickle!r}")
    if arch is not None and not isinstance(arch, str):
        raise TypeError(f"arch must be a model spec string or None, got {type(arch).__name__}")
    if spec.startswith("sparsekit:"):
        _no_arch(spec, arch, "a sparsekit spec builds the model itself")
        from sparsekit.models import get_model, list_models

        name, _, kw_text = spec[len("sparsekit:"):].partition(":")
        kwargs = {**(defaults or {}), **parse_kwargs(kw_text, what=f"model spec {spec!r}")}
        if name.strip().lower() not in list_models():
            raise SparsekitError(f"model spec {spec!r}: sparsekit has no model {name!r}; valid models: "
                                 f"{', '.join(list_models())} (other builders: package.module:factory)")
        try:
            return get_model(name, **kwargs)
        except (TypeError, ValueError) as e:
            raise SparsekitError(f"model spec {spec!r}: {e}") from e
    if spec.startswith("torchvision:"):
        _no_arch(spec, arch, "a torchvision spec builds the model itself")
        return _load_torchvision(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_file(path, arch=arch, trust_pickle=trust_pickle)
    match = _FACTORY_SPEC.match(spec)
    looks_like_file = match is not None and match["kwargs"] is None and Path(match["attr"]).suffix in _MODEL_SUFFIXES
    if match and not looks_like_file:
        _no_arch(spec, arch, "a factory spec builds the model itself")
        return _load_factory(spec, match["module"], match["attr"], match["kwargs"] or "")
    if path.suffix.lower() in _MODEL_SUFFIXES or os.sep in spec or (os.altsep and os.altsep in spec):
        raise FileNotFoundError(f"model file {spec} does not exist")
    raise SparsekitError(f"cannot read model spec {spec!r}: it is no file and no builder;{_bare_name_hint(spec)} "
                         f"give {SPEC_FORMS}")


def _bare_name_hint(spec: str) -> str:
    """`` did you mean sparsekit:NAME or torchvision:NAME?`` for a bare (or misspelt) model name."""
    from sparsekit.models import list_models

    name = spec.strip().lower()
    candidates = [f"sparsekit:{n}" for n in list_models()]
    try:
        import torchvision.models as tv_models

        candidates += [f"torchvision:{n}" for n in tv_models.list_models()]
    except ImportError:
        pass
    import difflib

    close = [c for c in candidates if c.split(":", 1)[1] == name]  # a bare name: every builder that has it
    if not close:
        by_name = {c.split(":", 1)[1]: c for c in reversed(candidates)}  # sparsekit's first
        close = [by_name[n] for n in difflib.get_close_matches(name, list(by_name), n=3)]
    return f" did you mean {' or '.join(close[:3])}?" if close else ""


def build_model(spec: str | None, data: Any, *, arch: str | None, trust_pickle: bool,
                seed: int | None = None) -> nn.Module:
    """The model for ``spec``; ``sparsekit:`` models get ``num_classes`` and input size from the data.

    Without ``spec``, flat-vector data (digits) gets the paper-style MLP ``sparsekit:mlp``. With ``seed``
    the initial weights of a built model are a function of it (torch's global RNG is left as it was).
    """
    if spec is None:
        if len(data.input_shape) != 1:
            raise UserError(f"--model is required for {data.name} (e.g. --model sparsekit:resnet20)")
        spec = "sparsekit:mlp"
    defaults: dict[str, Any] = {"num_classes": data.num_classes}
    if spec.split(":")[:2] == ["sparsekit", "mlp"]:
        defaults["in_features"] = math.prod(data.input_shape)
    elif len(data.input_shape) == 3:
        defaults["in_channels"] = data.input_shape[0]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = load_model(spec, arch=arch, trust_pickle=trust_pickle, defaults=defaults)
    check_model_fits_data(model, data, spec)
    if spec.startswith("sparsekit:"):  # record the keyword arguments taken from the data
        name, _, kw_text = spec[len("sparsekit:"):].partition(":")
        given = parse_kwargs(kw_text)
        extra = [f"{k}={v!r}" for k, v in defaults.items() if k not in given]
        spec = f"sparsekit:{name}:" + ",".join([kw_text.strip(",")] * bool(kw_text.strip(",")) + extra)
    model.__dict__[SPEC_ATTR] = spec
    return model


SPEC_ATTR = "_sparsekit_model_spec"
"""Attribute (in ``module.__dict__``) of a model from :func:`build_model`: its spec with the data's defaults."""


def spec_of(model: nn.Module, spec: str) -> str:
    """The spec that rebuilds ``model`` (with the defaults :func:`build_model` took from the data)."""
    return model.__dict__.get(SPEC_ATTR, spec)


def check_model_fits_data(model: nn.Module, data: Any, spec: str) -> None:
    """One forward pass on two zero inputs of the data's shape, before any training: a model that cannot take
    the data, or gives another number of outputs than the data has classes, is one clear error."""
    if any(p.is_meta for p in model.parameters()):
        return
    shape = tuple(data.input_shape)
    hint = ("flat vectors such as digits fit an MLP (sparsekit:mlp, the default); images (C, H, W) fit a conv net "
            "such as sparsekit:resnet20 (or digits:flat=false with a conv net)")
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError as e:  # torch.export programs have no train/eval mode
        raise UserError(f"--model {spec} cannot be trained ({e}); a torch.export program (.pt2) is for inference: "
                        "train the eager nn.Module (sparsekit:NAME, package.module:factory or a state_dict with "
                        "--arch) and export it afterwards") from None
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape)))
    except Exception as e:  # any failure of the forward pass means the model does not take these inputs
        raise UserError(f"--model {spec} does not fit --data {data.name}: on inputs of shape {shape} it fails with "
                        f"{_first_line(e)}; {hint}") from e
    finally:
        model.train(was_training)
    classes = getattr(data, "num_classes", None)
    if isinstance(out, torch.Tensor) and classes and (out.dim() != 2 or out.shape[-1] != classes):
        raise UserError(f"--model {spec} gives outputs of shape {tuple(out.shape)} for --data {data.name}, which "
                        f"has {classes} classes; set the model's num_classes={classes}")


def _no_arch(spec: str, arch: str | None, why: str) -> None:
    if arch is not None:
        raise SparsekitError(f"--arch is only used with state_dict files, but {spec!r} is not one ({why})")


def _load_torchvision(spec: str) -> nn.Module:
    _, _, rest = spec.partition(":")
    name, _, kw_text = rest.partition(":")
    try:
        import torchvision.models as tv_models
    except ImportError as e:
        raise ImportError(f"model spec {spec!r} needs torchvision, which is not installed: "
                          'pip install "sparsekit[vision]"') from e
    kwargs = parse_kwargs(kw_text, what=f"model spec {spec!r}")
    available = tv_models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise SparsekitError(f"torchvision has no model {name!r} (model spec {spec!r}); {hint}")
    builder = tv_models.get_model_builder(name)
    params = inspect.signature(builder).parameters
    for key in _NO_DOWNLOAD:
        if kwargs.get(key) is not None:
            raise SparsekitError(
                f"model spec {spec!r}: sparsekit never downloads weights, so {key} must be None; to prune "
                f"pretrained weights save a state_dict and pass it with --arch torchvision:{name}")
        if key in params:
            kwargs[key] = None
    try:
        model = builder(**kwargs)
    except TypeError as e:
        raise SparsekitError(f"model spec {spec!r}: {e}") from e
    return model


def _load_factory(spec: str, module_name: str, attr: str, kw_text: str) -> nn.Module:
    kwargs = parse_kwargs(kw_text, what=f"model spec {spec!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ImportError(f"model spec {spec!r}: no module named {e.name!r}; accepted forms: {SPEC_FORMS}") from e
        raise
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SparsekitError(f"model spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SparsekitError(f"model spec {spec!r}: {module_name}.{attr} is not callable")
    try:
        model = obj(**kwargs)
    except TypeError as e:
        raise SparsekitError(f"model spec {spec!r}: calling {module_name}.{attr} failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise SparsekitError(f"model spec {spec!r}: {module_name}.{attr}() returned {type(model).__name__}, "
                             "not a torch.nn.Module")
    return model


def _load_file(path: Path, *, arch: str | None, trust_pickle: bool) -> nn.Module:
    check_regular_file(path, "model file")  # never read a device or FIFO (endless / blocking)
    if path.suffix.lower() == ".safetensors":
        obj = _load_safetensors_state_dict(path)
        return _state_dict_into_arch(path, obj, arch)
    if _looks_like_safetensors(path):
        return _state_dict_into_arch(path, _load_safetensors_state_dict(path), arch)
    kind, names = inspect_model_archive(path)
    if kind == "torchscript":
        _no_arch(str(path), arch, "it is a TorchScript archive")
        if not trust_pickle:
            raise UnsafeFileError(
                f"{path} is a TorchScript archive: TorchScript is code (its __setstate__ and methods run when it "
                "loads), so it is refused like a pickle; pass --trust-pickle (Python: trust_pickle=True) only if "
                "you trust its source, or save a state_dict and load it with --arch")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            try:
                return torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as e:
                raise SparsekitError(f"cannot load TorchScript archive {path}: {_first_line(e)}") from e
    if kind == "export":
        _no_arch(str(path), arch, "it is a torch.export archive")
        if not trust_pickle:
            check_export_archive(path, names)
        return _load_exported(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
        if needs is None and not _looks_like_pickle(path):
            raise SparsekitError(f"cannot read {path} as a model file: it is neither a torch file nor a pickle "
                                 f"(random or corrupted bytes?); accepted: {SPEC_FORMS}") from None
        if not trust_pickle:
            what = f" (it needs {needs.group(1)})" if needs else ""
            raise UnsafeFileError(
                f"{path} is a pickled Python object{what}: loading it would execute arbitrary code from the "
                "file; pass --trust-pickle (Python: trust_pickle=True) only if you trust its source, or save "
                "a state_dict and load it with --arch") from e
        obj = _load_trusted_pickle(path)
    except OSError:
        raise
    except Exception as e:  # torch.load raises KeyError, EOFError, UnicodeDecodeError, ... on non-torch files
        raise SparsekitError(f"cannot read {path} as a model file ({type(e).__name__}: {_first_line(e)}); "
                             f"accepted: {SPEC_FORMS}") from e
    if isinstance(obj, nn.Module):
        _no_arch(str(path), arch, "it holds a whole module")
        return obj
    return _state_dict_into_arch(path, obj, arch)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file whatever its name: an 8-byte header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(10)
    return len(head) == 10 and head[8:10] in (b'{"', b"{}") and 2 <= int.from_bytes(head[:8], "little") < 1 << 40


def _looks_like_pickle(path: Path) -> bool:
    """A pickle starts with the PROTO opcode (protocol 2+) or is a zip written by torch.save."""
    with open(path, "rb") as f:
        head = f.read(2)
    return (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK"


def _load_safetensors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a state_dict (no code execution); sparsekit tickets are refused here."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") == "sparsekit-ticket":
            raise SparsekitError(f"{path} is a sparsekit ticket, not a model; give it as TICKET, and the model "
                                 "separately")
        return load_file(str(path))
    except SafetensorError as e:
        raise SparsekitError(f"cannot read {path} as a safetensors state_dict: {_first_line(e)}") from e


def _state_dict_into_arch(path: Path, obj: object, arch: str | None) -> nn.Module:
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        raise SparsekitError(f"{path} holds a {type(obj).__name__} that is neither a module nor a state_dict "
                             "(a dict of tensors, possibly under 'state_dict' or 'model')")
    key = None if state_dict is obj else next(k for k in _STATE_DICT_KEYS if obj.get(k) is state_dict)  # type: ignore[attr-defined]
    if arch is None:
        from ._state_dict_model import model_from_state_dict

        model = model_from_state_dict(state_dict, path)  # layer kinds read from shapes and names
    else:
        if Path(arch).expanduser().exists():
            raise SparsekitError(f"--arch {arch!r} is a file; give a builder: sparsekit:NAME, "
                                 "torchvision:NAME or package.module:factory")
        model = load_model(arch)
        _load_state_dict_strict(model, state_dict, path)
    from ._state_dict_model import SOURCE_ATTR

    model.__dict__[SOURCE_ATTR] = (obj, key, list(state_dict))
    return model


def _load_trusted_pickle(path: Path) -> Any:
    """``torch.load(weights_only=False)``: runs the file's pickle, which the user chose to trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise SparsekitError(f"cannot unpickle {path}: it refers to code that is not importable here "
                             f"({_first_line(e)}); import or install the package that defines the model") from e


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_tensor_dict(obj: object) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _find_state_dict(obj: object) -> Mapping[str, torch.Tensor] | None:
    if _is_tensor_dict(obj):
        return obj  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return obj[key]
    return None


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(state_dict)`` with an error naming the missing and unexpected keys."""
    expected = model.state_dict()
    prefix = "module."  # saved from a DistributedDataParallel / DataParallel wrapper
    if (all(k.startswith(prefix) for k in state_dict) and not any(k.startswith(prefix) for k in expected)):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong:
        problems.append(f"shapes differ (file vs model): {_listed(wrong)}")
    if problems:
        raise SparsekitError(f"state_dict {path} does not fit the --arch model {type(model).__name__}: "
                             + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


# --- torch.export archives -------------------------------------------------------------------------------

# Graph ops whose weight argument is a prunable weight: op name -> (weight argument, type name).
_LINEAR_OPS = {"linear"}
_CONV_OPS = {"conv1d", "conv2d", "conv3d"}
_CONVT_OPS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_MATMUL_OPS = {"mm": "mat2", "addmm": "mat2", "matmul": "other"}
_TRANSPOSES = {"t", "permute", "transpose"}


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    packet = getattr(target, "_overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(target, "__name__", "")
    return name.split(".")[-1]


def _call_args(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in (empty if the op has no schema)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _is_2d_swap(node: torch.fx.Node) -> bool:
    """``t(w)``, ``permute(w, [1, 0])`` or ``transpose(w, 0, 1)`` of a 2-D weight."""
    name = _op_name(node)
    if name not in _TRANSPOSES:
        return False
    args = _call_args(node)
    if name == "permute":
        return list(args.get("dims", ())) == [1, 0]
    if name == "transpose":
        dims = (args.get("dim0"), args.get("dim1"))
        return all(isinstance(d, int) for d in dims) and {d % 2 for d in dims} == {0, 1}  # type: ignore[operator]
    return True


def _export_layers(ep: Any) -> tuple[dict[str, tuple[str, LayerLayout]], set[str]]:
    """``({param fqn: (type name, layout)}, fqns of parameters the graph never reads)`` of an ExportedProgram.

    Weights used by two ops with different layouts are left out (they are neither known nor unused).
    """
    to_param: dict[str, str] = dict(ep.graph_signature.inputs_to_parameters)
    graph = ep.graph_module.graph
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    found: dict[str, set[tuple[str, LayerLayout]]] = {}

    def record(weight: object, type_name: str, layout: LayerLayout) -> None:
        if isinstance(weight, torch.fx.Node) and weight.op == "placeholder" and weight.name in to_param:
            found.setdefault(to_param[weight.name], set()).add((type_name, layout))

    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node)
        args = _call_args(node)
        weight = args.get("weight")
        ndim = _ndim(weight)
        if name in _LINEAR_OPS:
            record(weight, "Linear", LayerLayout(0, 1))
        elif name in _CONV_OPS or (name == "convolution" and not args.get("transposed", False)):
            record(weight, f"Conv{max(ndim - 2, 1)}d", LayerLayout(0, 1, int(args.get("groups", 1) or 1)))
        elif name in _CONVT_OPS or name == "convolution":
            record(weight, f"ConvTranspose{max(ndim - 2, 1)}d", LayerLayout(1, 0, int(args.get("groups", 1) or 1)))
        elif name in _MATMUL_OPS:
            mat = args.get(_MATMUL_OPS[name])
            if isinstance(mat, torch.fx.Node) and mat.op == "call_function" and _is_2d_swap(mat):
                record(_call_args(mat).get("self"), "Linear", LayerLayout(0, 1))  # x @ w.T: w is (out, in)
            elif _ndim(mat) == 2:
                record(mat, "MatMul", LayerLayout(1, 0))  # x @ w: w is (in, out)
    known = {fqn: next(iter(uses)) for fqn, uses in found.items() if len(uses) == 1}
    unused = {fqn for ph, fqn in to_param.items() if ph in placeholders and not placeholders[ph].users}
    return known, unused


def _ndim(node: object) -> int:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else 0


def export_layer_layouts(ep: Any) -> dict[str, LayerLayout]:
    """The prunable weights of a ``torch.export`` ExportedProgram and how to read their axes.

    A parameter counts when the graph passes it straight (or transposed, for ``mm``/``addmm``) as the
    weight of ``aten.linear``, ``aten.conv{1,2,3}d``, ``aten.conv_transpose{1,2,3}d``,
    ``aten.convolution`` (both before and after ``run_decompositions``) or as the second matrix of
    ``aten.mm``/``aten.addmm``/``aten.matmul``; group counts are read from the call.

    Args:
        ep: a ``torch.export.ExportedProgram``.

    Returns:
        ``{parameter fqn: LayerLayout}``; fqns are those of ``ep.module().named_parameters()``.
    """
    known, _ = _export_layers(ep)
    return {fqn: layout for fqn, (_, layout) in known.items()}


def _mark_export_layers(gm: nn.Module, known: dict[str, tuple[str, LayerLayout]], unused: set[str]) -> None:
    """Make :func:`sparsekit.find_layers` see the weights of an unlifted exported module.

    ``ExportedProgram.module()`` holds its parameters in plain ``nn.Module`` containers, so nothing
    says which are Linear or Conv weights. Each owner of a known weight declares the layouts found in
    the graph with :func:`sparsekit.layers.declare_layouts` (reported under the op's name, ``Linear``,
    ``Conv2d``, ...). Owners of weights the graph never reads (tied weights un-tied by serialisation)
    declare nothing to prune; any other 2-D weight is left to ``find_layers``, which reports it as
    unsupported unless it is filtered out.
    """
    by_owner: dict[str, list[tuple[str, str, LayerLayout]]] = {}
    for fqn, (type_name, layout) in known.items():
        owner, _, pname = fqn.rpartition(".")
        by_owner.setdefault(owner, []).append((pname, type_name, layout))
    for fqn in unused:
        by_owner.setdefault(fqn.rpartition(".")[0], [])
    for owner_name, entries in by_owner.items():
        try:
            module = gm.get_submodule(owner_name)
        except AttributeError:
            continue
        entries = [e for e in entries if isinstance(getattr(module, e[0], None), torch.Tensor)]
        declare_layouts(module, {pname: layout for pname, _, layout in entries},
                        entries[0][1] if entries else None)


def _load_exported(path: Path) -> nn.Module:
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # the archive reader raises many types; all mean "not a readable .pt2"
        raise SparsekitError(f"cannot load torch.export archive {path}: {_first_line(e)}") from e
    known, unused = _export_layers(ep)
    gm = ep.module()
    _mark_export_layers(gm, known, unused)
    return gm


# --- checkpoints as tensors ------------------------------------------------------------------------------


def read_state_dict_file(path: Path) -> Mapping[str, torch.Tensor] | None:
    """The state_dict a file holds (safetensors, or ``torch.save`` read with ``weights_only=True``, possibly
    under a ``"state_dict"``/``"model"`` key), or None if the file holds something else (a module archive, a
    pickled module). Nothing from the file runs as code.

    Raises:
        SparsekitError: the file is a sparsekit ticket or cannot be read.
    """
    check_regular_file(path, "model file")  # never read a device or FIFO (endless / blocking)
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        return _load_safetensors_state_dict(path)
    kind, _ = inspect_model_archive(path)
    if kind in ("torchscript", "export"):
        return None  # a module archive: load_model applies the archive checks
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None  # a pickled object: load_model explains --trust-pickle
    except OSError:
        raise
    except Exception as e:  # torch.load raises KeyError, EOFError, UnicodeDecodeError, ... on non-torch files
        raise SparsekitError(f"cannot read {path} as a model file ({type(e).__name__}: {_first_line(e)}); "
                             f"accepted: {SPEC_FORMS}") from e
    return _find_state_dict(obj)


def checkpoint_tensors(spec: str, *, arch: str | None = None, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as they are: a state_dict file read directly (no architecture needed),
    any other model spec through :func:`load_model` and ``state_dict()``."""
    path = Path(spec).expanduser()
    if arch is None and path.is_file():
        sd = read_state_dict_file(path)
        if sd is not None:
            return dict(sd)
    net = load_model(spec, arch=arch, trust_pickle=trust_pickle)
    return {k: v.detach() for k, v in net.state_dict().items()}


def write_state_dict(model: nn.Module, path: Path, *, overwrite: bool = False) -> int:
    """Write ``model``'s state_dict with ``torch.save``, atomically, in the layout of the file it was loaded
    from (under the same ``"state_dict"``/``"model"`` key, with the same ``module.`` prefix, the file's other
    entries kept); models built from a spec get a plain state_dict. ``torch.load(path, weights_only=True)``
    reads it. Returns the number of tensors written.

    Raises:
        ValueError: the model is on the meta device (it has no values to write).
    """
    import io

    from sparsekit._io import atomic_write_bytes

    from ._state_dict_model import SOURCE_ATTR

    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = [k for k, v in sd.items() if v.is_meta]
    if meta:
        raise ValueError(f"the model's {', '.join(meta[:3])} are on the meta device (no values) and cannot be "
                         "written; use a materialised model or write a ticket (.safetensors)")
    obj: Any = sd
    source = model.__dict__.get(SOURCE_ATTR)
    if source is not None:
        container, key, keys = source
        if set(sd) != set(keys) and {f"module.{k}" for k in sd} == set(keys):
            sd = {f"module.{k}": v for k, v in sd.items()}
        if set(sd) == set(keys):
            sd = {k: sd[k] for k in keys}  # the file's order
        obj = sd if key is None else {**container, key: sd}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
    return len(sd)
