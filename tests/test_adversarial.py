"""Hostile inputs (SECURITY.md): every crafted file fails safely, with a one-line error, in bounded memory.

Classes: code execution from model files (.pt2, TorchScript), unbounded work (declared shapes,
overlapping tensors, devices/FIFOs, nested JSON, huge numbers and names, CIFAR pickles), lost or
half-written data (kill during save, concurrent saves, device targets, all-or-nothing apply, resume
with other settings), and messages. Every hostile fixture is generated here, under tmp_path; where a
test shows an attack is refused, it first shows that plain torch would have run it.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import error_line, run
from torch import nn

import sparsekit
from sparsekit import TicketError
from sparsekit._io import _HOST, atomic_write_bytes
from sparsekit.cli._models import load_model
from sparsekit.errors import SparsekitError, UnsafeFileError
from sparsekit.layers import LayerLayout

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO read blocks forever)."""
    def boom(*_):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- code execution: torch.export archives -----------------------------------------------------------------


class _Payload:
    """Unpickling this writes ``marker`` (standing for any code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _genuine_pt2(path: Path, dynamic: bool = False) -> Path:
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    shapes = ({0: torch.export.Dim("b", min=2, max=64)},) if dynamic else None
    torch.export.save(torch.export.export(m, (torch.randn(2, 4),), dynamic_shapes=shapes), str(path))
    return path


def _rewrite_zip(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = edit(info.filename, zin.read(info.filename))
            if out is not None:
                zout.writestr(info.filename, out)
        extra = edit("__extra__", b"")
        if extra:
            name, data = extra
            zout.writestr(name, data)
    return dst


def _pickled_weight(marker: Path):
    def edit(name: str, data: bytes):
        if name.endswith("_weights_config.json"):
            cfg = json.loads(data)
            cfg["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/weight_0"):
            buf = io.BytesIO()
            torch.save(_Payload(str(marker)), buf)
            return buf.getvalue()
        return None if name == "__extra__" else data
    return edit


def _sympy_eval(marker: Path):
    def edit(name: str, data: bytes):
        if name.endswith("models/model.json"):
            s = data.decode()
            start = s.index("Symbol(")
            end = s.index(")", start) + 1
            expr = s[start:end]
            return s.replace(expr, f"{expr} + 0*len(open('{marker}', 'w').name)", 1).encode()
        return None if name == "__extra__" else data
    return edit


def _json_edit(member_suffix: str, fn):
    def edit(name: str, data: bytes):
        if name.endswith(member_suffix):
            return json.dumps(fn(json.loads(data))).encode()
        return None if name == "__extra__" else data
    return edit


def _extra_member(rel: str, data: bytes = b"\0" * 8):
    def edit(name: str, content: bytes):
        if name == "__extra__":
            return (f"g/{rel}", data)
        return content
    return edit


def _retarget(old: str, new: str):
    def edit(name: str, data: bytes):
        if name.endswith("models/model.json"):
            return data.replace(f'"{old}"'.encode(), f'"{new}"'.encode(), 1)
        return None if name == "__extra__" else data
    return edit


def _opaque_constant(cfg):
    cfg["config"]["0.weight"]["path_name"] = "opaque_obj_0"
    return cfg


def test_pt2_pickled_weight_would_run_code_and_is_refused(tmp_path):
    g = _genuine_pt2(tmp_path / "g.pt2")
    marker = tmp_path / "ran"
    evil = _rewrite_zip(g, tmp_path / "evil.pt2", _pickled_weight(marker))
    with pytest.raises(Exception):  # noqa: B017 -- the point is the side effect, not torch's error
        torch.export.load(str(evil))
    assert marker.exists(), "the fixture no longer reproduces the attack"
    marker.unlink()
    with pytest.raises(UnsafeFileError, match=r"pickled payload '0.weight'.*--trust-pickle"):
        load_model(str(evil))
    ticket = tmp_path / "t.safetensors"
    sparsekit.save_ticket(sparsekit.prune(load_model(str(g)), "er-uniform", 0.5), ticket)
    for args in (["prune", evil, "-d", "0.1"], ["verify", ticket, evil], ["apply", ticket, evil, "-o", tmp_path / "o"],
                 ["export", ticket, "--model", evil, "--onnx", tmp_path / "o.onnx", "--input-shape", "1,4"],
                 ["fit", "weak", "--model", evil, "--data", "synthetic:n=8,shape=4", "-d", "0.5", "--epochs", "1"]):
        assert "--trust-pickle" in error_line(run(*args), 1), args
    assert not marker.exists()
    assert load_model(str(g)) is not None  # the genuine archive still loads


def test_pt2_sympy_expression_would_run_code_and_is_refused(tmp_path):
    g = _genuine_pt2(tmp_path / "g.pt2", dynamic=True)
    marker = tmp_path / "ran"
    evil = _rewrite_zip(g, tmp_path / "evil.pt2", _sympy_eval(marker))
    try:
        torch.export.load(str(evil))
    except Exception:  # noqa: BLE001
        pass
    assert marker.exists(), "the fixture no longer reproduces the attack"
    marker.unlink()
    with pytest.raises(UnsafeFileError, match="not plain arithmetic"):
        load_model(str(evil))
    assert not marker.exists()
    assert load_model(str(g)) is not None


@pytest.mark.parametrize("edit, match", [
    (_json_edit("_weights_config.json", _opaque_constant), "non-tensor payload"),
    (_extra_member("data/aotinductor/model/model.so"), "compiled or external"),
    (_extra_member("data/weights/model.pt"), "legacy pickled payload"),
    (_retarget("torch.ops.aten.linear.default", "torch.ops.aten.from_file.default"), "file-I/O operator"),
    (_retarget("torch.ops.aten.linear.default", "torch.save"), "only aten, prims"),
    (_retarget("torch.ops.aten.linear.default", "_operator.methodcaller"), "operator.methodcaller"),
])
def test_pt2_unsafe_members_and_operators_are_refused(tmp_path, edit, match):
    g = _genuine_pt2(tmp_path / "g.pt2")
    evil = _rewrite_zip(g, tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeFileError, match=match):
        load_model(str(evil))


def test_pt2_sample_inputs_needing_unpickling_are_refused(tmp_path):
    g = _genuine_pt2(tmp_path / "g.pt2")
    marker = tmp_path / "ran"

    def edit(name: str, data: bytes):
        if name.endswith("data/sample_inputs/model.pt"):
            buf = io.BytesIO()
            torch.save((_Payload(str(marker)),), buf)
            return buf.getvalue()
        return None if name == "__extra__" else data
    evil = _rewrite_zip(g, tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeFileError, match="sample inputs"):
        load_model(str(evil))
    assert not marker.exists()


class _SetstateWritesFile(nn.Module):
    """A TorchScript module whose ``__setstate__`` creates a file on load (torch.from_file, shared)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.buf = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        self.buf = torch.from_file(state[0], shared=True, size=16)


def test_torchscript_setstate_writes_files_and_needs_the_opt_in(tmp_path):
    marker = tmp_path / "written"
    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_SetstateWritesFile(str(marker))).save(str(path))
        assert not marker.exists()
        torch.jit.load(str(path))
    assert marker.exists(), "the fixture no longer reproduces the attack"
    marker.unlink()
    with pytest.raises(UnsafeFileError, match="TorchScript is code.*--trust-pickle"):
        load_model(str(path))
    line = error_line(run("prune", path, "-d", "0.1"), 1)
    assert "TorchScript" in line and "--trust-pickle" in line
    assert not marker.exists()


# --- non-regular files --------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_devices_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    tfifo = tmp_path / "t.safetensors"
    os.mkfifo(tfifo)
    with deadline(20):
        for target in (fifo, Path("/dev/zero"), Path("/dev/urandom")):
            if not target.exists():
                continue
            with pytest.raises(SparsekitError, match="not a regular file"):
                load_model(str(target))
            assert "not a regular file" in error_line(run("prune", target, "-d", "0.1"), 1)
        for target in (tfifo, Path("/dev/zero")):
            with pytest.raises(TicketError, match="not a regular file"):
                sparsekit.load_ticket(target)
            assert "not a regular file" in error_line(run("info", target), 1)


# --- bounded work: hostile tickets in a memory-capped subprocess ---------------------------------------------


def _write_ticket(path: Path, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
                  header_extra: dict | None = None) -> Path:
    from sparsekit.formats.ticket_file import FORMAT, FORMAT_VERSION, serialize

    base = {"kind": "er", "method": "er-uniform", "method_options": {}, "density": 0.5, "realised_density": 0.5,
            "seed": "0", "flow": "repair", "exact": False, "rng": sparsekit.rng.RNG_ID, "layers": []}
    base.update(meta)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "sparsekit_version": "0", "kind": base["kind"],
              "ticket": json.dumps(base) if "raw_ticket" not in (header_extra or {}) else header_extra["raw_ticket"]}
    data = serialize(tensors or {}, header)
    path.write_bytes(data)
    return path


def _huge_layer(**row) -> dict:
    r = {"fqn": "0.weight", "type": "Linear", "shape": [65536, 65536], "density": 0.5, "nonzeros": 2**31}
    r.update(row)
    return r


def _overlapping(path: Path) -> Path:
    """2048 table entries all pointing at the same 1 MiB."""
    from sparsekit.formats.ticket_file import FORMAT, FORMAT_VERSION

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "rewired", "ticket": "{}"}
    table = {"__metadata__": meta}
    for i in range(2048):
        table[f"state/t{i}"] = {"dtype": "U8", "shape": [1 << 20], "data_offsets": [0, 1 << 20]}
    raw = json.dumps(table).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (1 << 20))
    return path


def hostile_tickets(tmp: Path) -> dict[str, Path]:
    """Every hostile ticket of the memory test, by name."""
    out = {
        "huge_er": _write_ticket(tmp / "huge_er.st", {"layers": [_huge_layer()]}),
        "huge_exact": _write_ticket(tmp / "huge_exact.st", {"exact": True, "layers": [_huge_layer()]}),
        "huge_resample": _write_ticket(tmp / "huge_resample.st", {"flow": "resample", "layers": [_huge_layer()]}),
        "int64_overflow": _write_ticket(tmp / "ovf.st", {"layers": [_huge_layer(shape=[2**40, 2**40], nonzeros=0)]}),
        "huge_rewired": _write_ticket(tmp / "huge_rewired.st", {"kind": "rewired", "layers": [
            _huge_layer(encoding="bitpack", encoding_params={})]},
            {"mask/0.weight": torch.zeros(8, dtype=torch.uint8)}),
        "overlap": _overlapping(tmp / "overlap.st"),
        "nested_json": _write_ticket(tmp / "nested.st", {}, header_extra={"raw_ticket": "[" * 100_000 + "]" * 100_000}),
        "digits_5000": _write_ticket(tmp / "digits.st", {}, header_extra={
            "raw_ticket": '{"kind": "er", "density": ' + "9" * 5000 + "}"}),
        "seed_wrong_type": _write_ticket(tmp / "seed.st", {"init": {"scheme": "kaiming-normal", "seed": [1, 2]},
                                                          "layers": []}),
        "seed_huge": _write_ticket(tmp / "seed_huge.st", {"init": {"scheme": "kaiming-normal", "seed": "9" * 5000}}),
        "long_name": _write_ticket(tmp / "name.st", {"layers": [_huge_layer(fqn="a" * 5_000_000, shape=[2, 2],
                                                                            nonzeros=2)]}),
        "duplicate_rows": _write_ticket(tmp / "dup.st", {"layers": [
            _huge_layer(shape=[3, 4], nonzeros=6), _huge_layer(shape=[3, 4], nonzeros=6)]}),
    }
    return out


_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    import torch
    from torch import nn
    import sparsekit
    from sparsekit import TicketError
    tickets = json.loads(sys.argv[2])  # written by the test process: only the loads count here
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    def status(key):
        return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1])
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        base, peak_key = status("VmRSS"), "VmHWM"
    except OSError:
        base, peak_key = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    cap = vm + int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # a regression fails with MemoryError, not the machine
    rows = []
    for name, path in tickets.items():
        for how in ("alone", "with model", "apply"):
            start = time.perf_counter()
            try:
                if how == "alone":
                    sparsekit.load_ticket(path)
                elif how == "with model":
                    sparsekit.load_ticket(path, model=model)
                else:
                    sparsekit.apply_ticket(model, path)
                outcome = "LOADED"
            except TicketError as e:
                outcome = "TicketError"
                if "allocat" in str(e) or "cannot rebuild" in str(e):  # the rlimit stopped it, not a check
                    outcome = "TicketError after trying to allocate: " + str(e)[:200]
            except BaseException as e:
                outcome = type(e).__name__ + ": " + str(e)[:200]
            rows.append([name, how, outcome, round(time.perf_counter() - start, 3)])
    peak = status(peak_key) if peak_key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "extra_peak_kib": peak - base}))
""")


def test_hostile_tickets_fail_in_bounded_memory_and_time(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(_MEMORY_PROBE)
    limit = 512 << 20  # address-space headroom: far above the 64 MiB asserted, far below what the attacks asked
    tickets = {name: str(p) for name, p in hostile_tickets(tmp_path).items()}
    res = subprocess.run([sys.executable, str(probe), str(ROOT), json.dumps(tickets), str(limit)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    bad = [r for r in report["rows"] if r[2] != "TicketError"]
    assert not bad, bad
    assert report["extra_peak_kib"] < 64 * 1024, report  # peak RSS over the loaded interpreter and model
    assert max(r[3] for r in report["rows"]) < 10, report


def test_hostile_ticket_messages(tmp_path):
    t = hostile_tickets(tmp_path)
    cases = {
        "huge_er": "over the limit of 1,073,741,824 for a ticket loaded without its model",
        "overlap": "overlaps the previous tensor",
        "nested_json": "nested too deeply",
        "digits_5000": "not JSON",
        "seed_wrong_type": r"init seed must be a decimal string .* \(list\)",
        "seed_huge": "init seed must be a decimal string",
        "int64_overflow": "fewer than 2\\*\\*62 elements",
        "long_name": "layer name of 5,000,000 characters",
        "duplicate_rows": "appears twice",
    }
    for name, match in cases.items():
        with pytest.raises(TicketError, match=match):
            sparsekit.load_ticket(t[name])
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(TicketError, match=r"does not fit this model: .*shape differs: 0.weight \(ticket \(65536"):
        sparsekit.load_ticket(t["huge_er"], model=model)
    with pytest.raises(TicketError, match="over the limit"):
        sparsekit.load_ticket(t["huge_er"], max_elements=1000)
    start = time.perf_counter()
    with pytest.raises(TicketError):
        run_info = run("info", t["long_name"])
        raise TicketError(error_line(run_info, 1))
    assert time.perf_counter() - start < 5


def test_element_cap_override(tmp_path, monkeypatch):
    m = nn.Sequential(nn.Linear(40, 30))
    path = sparsekit.save_ticket(sparsekit.prune(m, "er-uniform", 0.5), tmp_path / "t.safetensors")
    assert sparsekit.load_ticket(path).layers[0].numel == 1200
    with pytest.raises(TicketError, match="over the limit of 1,000"):
        sparsekit.load_ticket(path, max_elements=1000)
    monkeypatch.setenv("SPARSEKIT_MAX_TICKET_ELEMENTS", "100")
    with pytest.raises(TicketError, match="SPARSEKIT_MAX_TICKET_ELEMENTS"):
        sparsekit.load_ticket(path)
    assert sparsekit.load_ticket(path, model=m).layers[0].numel == 1200  # the model bounds it instead


def test_header_over_cap_and_wrong_dtype_mask_messages(tmp_path):
    from sparsekit.formats import ticket_file

    big = tmp_path / "big.st"
    big.write_bytes(struct.pack("<Q", ticket_file._MAX_HEADER + 8) + b"{}")
    with pytest.raises(TicketError, match="exceeds the 104,857,600-byte limit"):
        sparsekit.load_ticket(big)
    m = nn.Sequential(nn.Linear(8, 6))
    t = sparsekit.prune(m, "er-uniform", 0.5, seed=1)
    t.kind = "rewired"
    good = sparsekit.save_ticket(t, tmp_path / "r.safetensors")
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["mask/0.weight"]["dtype"] = "I8"
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    with pytest.raises(TicketError, match=r"layer 0 \(0.weight\): mask tensor has dtype int8"):
        sparsekit.load_ticket(bad)


def test_info_escapes_terminal_control_characters(tmp_path):
    path = _write_ticket(tmp_path / "esc.st", {"method": "x\x1b[2J\x1b]0;owned\x07", "method_options": {
        "k\x1b[31m": "v\x1b[0m"}, "layers": [_huge_layer(fqn="evil\x1b[2Jname", shape=[3, 4], nonzeros=6)]})
    r = run("info", path)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert "\\x1b[2J" in r.output


# --- CIFAR pickles -------------------------------------------------------------------------------------------


class _Alloc:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_cifar_pickle_cannot_allocate_declared_shapes(tmp_path):
    from numpy._core.multiarray import _reconstruct

    from sparsekit.data._safe_pickle import safe_load

    path = tmp_path / "data_batch_1"
    for payload in (_Alloc(np.ndarray, ((300_000_000,), np.dtype("u1"))),
                    _Alloc(_reconstruct, (np.ndarray, (300_000_000,), b"b"))):
        path.write_bytes(pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2))
        assert len(path.read_bytes()) < 300
        with pytest.raises(UnsafeFileError, match="allocate|numpy.ndarray"):
            safe_load(path, what="CIFAR-10 python batch")
    arr = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for proto in (2, 4, 5):  # genuine arrays still load
        path.write_bytes(pickle.dumps({b"data": arr, b"labels": [0, 1]}, protocol=proto))
        assert np.array_equal(safe_load(path, what="CIFAR-10 python batch")[b"data"], arr)


# --- no lost or half-written data ----------------------------------------------------------------------------


def _save_same_path(args):
    path, barrier, seed = args
    m = nn.Sequential(nn.Linear(64, 64))
    t = sparsekit.prune(m, "er-uniform", 0.5, seed=seed)
    barrier.wait()
    try:
        sparsekit.save_ticket(t, path)
        return ("ok", seed)
    except FileExistsError:
        return ("exists", seed)


def test_concurrent_saves_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    trials, lost = 8, 0
    with ctx.Pool(2) as pool:
        for i in range(trials):
            path = tmp_path / f"t{i}.safetensors"
            barrier = ctx.Manager().Barrier(2)
            outcomes = pool.map(_save_same_path, [(path, barrier, 1), (path, barrier, 2)])
            winners = [s for o, s in outcomes if o == "ok"]
            assert sorted(o for o, _ in outcomes) == ["exists", "ok"], outcomes
            lost += len(winners) != 1 or sparsekit.load_ticket(path).seed != winners[0]
    assert lost == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


_KILL_WRITER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("sk_io", sys.argv[1] + "/sparsekit/_io.py")
    io_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io_mod)  # only the writer: no torch import, so each kill round is quick
    atomic_write_bytes = io_mod.atomic_write_bytes
    data = bytes(range(256)) * (int(sys.argv[3]) // 256)
    print("ready", flush=True)
    while True:
        atomic_write_bytes(sys.argv[2], data)
""")


def test_kill_during_save_leaves_no_partial_file(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_KILL_WRITER)
    target = tmp_path / "out.bin"
    size = 4 << 20
    expected = bytes(range(256)) * (size // 256)
    kills, partial = 20, 0
    for i in range(kills):
        p = subprocess.Popen([sys.executable, str(script), str(ROOT), str(target), str(size)],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.01 + 0.007 * i)
        p.kill()
        p.wait()
        if target.exists() and target.read_bytes() != expected:
            partial += 1
    assert partial == 0
    atomic_write_bytes(target, b"next")  # the next write removes what killed writers left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "writer.py"]
    # a live writer's temp file is never touched
    live = tmp_path / f".out.bin.sk{_HOST}-{os.getpid() + 0}-live.tmp"
    live.write_bytes(b"x")
    atomic_write_bytes(target, b"again")
    assert live.exists()


def test_device_targets_are_never_replaced(tmp_path):
    m = nn.Sequential(nn.Linear(4, 3))
    t = sparsekit.prune(m, "er-uniform", 0.5)
    with pytest.raises(SparsekitError, match="not a regular file"):
        sparsekit.save_ticket(t, "/dev/null", overwrite=True)
    line = error_line(run("apply", tmp_path / "x.st", "sparsekit:mlp", "-o", "/dev/null", "--force"), 1)
    assert "not a regular file" in line
    assert Path("/dev/null").is_char_device()


def test_read_only_folder_error_names_the_target(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"cannot write .*ro/t.bin"):
            atomic_write_bytes(ro / "t.bin", b"x")
    finally:
        ro.chmod(0o700)


def test_apply_ticket_is_all_or_nothing_with_init(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    t = sparsekit.prune(m, "er-uniform", 0.5, seed=2, dense=["4"])
    sparsekit.finalize(m)
    t.init = {"scheme": "kaiming-normal", "seed": "7"}
    t.layouts["4.weight"] = LayerLayout(0, 5, 1)  # the dense last layer: layout does not fit its shape
    fresh = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(TicketError, match=r"4.weight: layout .* does not fit"):
        sparsekit.apply_ticket(fresh, t, strict=False)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert not sparsekit.is_pruned(fresh)


# --- resume and seeds ----------------------------------------------------------------------------------------


_DATA = "synthetic:n=64,shape=16,num_classes=4"


@pytest.mark.parametrize("change, needle", [
    (["--density", "0.3"], "density: checkpoint 0.2, now 0.3"),
    (["--method", "er-erk"], "method: checkpoint 'er-balanced', now 'er-erk'"),
    (["--flow", "resample"], "flow: checkpoint 'repair', now 'resample'"),
    (["--exact"], "exact: checkpoint False, now True"),
    (["--data", "synthetic:n=64,shape=16,num_classes=4,seed=9"], "training data"),
])
def test_resume_refuses_other_mask_settings_and_data(tmp_path, change, needle):
    ck = tmp_path / "ck"
    args = ["fit", "weak", "--data", _DATA, "--density", "0.2", "--epochs", "1", "--batch-size", "32",
            "--checkpoint-dir", ck, "--no-progress"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    changed = list(args)
    if change[0] in changed:  # replace the option's value
        changed[changed.index(change[0]) + 1] = change[1]
    else:
        changed += change
    assert needle in error_line(run(*changed, "--resume"), 1)


def test_fit_weak_seed_fixes_the_weights(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"w{i}.safetensors"
        r = run("fit", "weak", "--data", _DATA, "--density", "0.3", "--epochs", "1", "--seed", "4", "-o", out,
                "--no-progress")
        assert r.exit_code == 0, r.output
        outs.append(sparsekit.load_ticket(out).weights)
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


# --- one-line messages ---------------------------------------------------------------------------------------


def test_messages_for_untrainable_models_and_bad_numbers(tmp_path):
    g = _genuine_pt2(tmp_path / "g.pt2")
    assert "cannot be trained" in error_line(run("fit", "weak", "--model", g, "--data", "synthetic:n=8,shape=4",
                                                 "-d", "0.5", "--epochs", "1", "--no-progress"), 1)
    assert "lr must be at most 1e+30" in error_line(run("fit", "weak", "--data", "synthetic:n=8,shape=4", "-d", "0.5",
                                                        "--epochs", "1", "--lr", "1e300", "--no-progress"), 1)
    assert "power_scale must be a finite number" in error_line(
        run("prune", "sparsekit:mlp:in_features=4", "-m", "er-erk", "-d", "0.5", "-O", "power_scale=nan"), 1)
    r = run("export", tmp_path / "t.st", "--model", "sparsekit:mlp", "--onnx", tmp_path / "o.onnx",
            "--input-shape", "100000,100000")
    assert r.exit_code != 0 and "over the limit of 268,435,456" in r.output
    line = error_line(run("prune", _random_file(tmp_path / "r.pt"), "-d", "0.5"), 1)
    assert "neither a torch file nor a pickle" in line
    ticket = sparsekit.save_ticket(sparsekit.prune(nn.Sequential(nn.Linear(4, 3)), "er-uniform", 0.5),
                                   tmp_path / "ticket.pt")
    line = error_line(run("prune", ticket, "-d", "0.5"), 1)
    assert "is a sparsekit ticket, not a model" in line


def _random_file(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def test_tampered_checkpoint_is_one_line(tmp_path):
    ck = tmp_path / "ck"
    args = ["fit", "weak", "--data", _DATA, "--density", "0.2", "--epochs", "1", "--checkpoint-dir", ck,
            "--no-progress"]
    assert run(*args).exit_code == 0
    saved = torch.load(ck / "checkpoint.pt", weights_only=True)
    del saved["config"]
    torch.save(saved, ck / "checkpoint.pt")
    assert "damaged or tampered: field config" in error_line(run(*args, "--resume"), 1)
    (ck / "checkpoint.pt").write_bytes(b"")
    assert "cannot read checkpoint" in error_line(run(*args, "--resume"), 1)
    # a checkpoint whose ticket declares a huge layer is bounded by the model before anything is built
    assert run(*args[:-3], "--checkpoint-dir", tmp_path / "ck2", "--no-progress").exit_code == 0
    saved = torch.load(tmp_path / "ck2" / "checkpoint.pt", weights_only=True)
    huge = _write_ticket(tmp_path / "huge.st", {"layers": [_huge_layer()]})
    saved["ticket"] = torch.frombuffer(bytearray(huge.read_bytes()), dtype=torch.uint8)
    torch.save(saved, tmp_path / "ck2" / "checkpoint.pt")
    line = error_line(run(*args[:-3], "--checkpoint-dir", tmp_path / "ck2", "--no-progress", "--resume"), 1)
    assert "does not fit this model" in line


def test_input_shape_cap_for_synflow():
    with pytest.raises(ValueError, match="over the limit of 268,435,456"):
        sparsekit.prune(nn.Sequential(nn.Linear(4, 3)), "er-synflow", 0.5, input_shape=(100000, 100000))


def test_write_errors_name_the_target_not_the_temp_file(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, dir=None, prefix="", **kw):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}abc.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=r"cannot write .*t\.bin: Permission denied") as info:
        atomic_write_bytes(tmp_path / "t.bin", b"x")
    assert ".tmp" not in str(info.value)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_resume_cleans_the_checkpoints_stale_temp_files(tmp_path):
    ck = tmp_path / "ck"
    args = ["fit", "weak", "--data", _DATA, "--density", "0.2", "--epochs", "1", "--checkpoint-dir", ck,
            "--no-progress"]
    assert run(*args).exit_code == 0
    stale = ck / f".checkpoint.pt.sk{_HOST}-{_dead_pid()}-abcd.tmp"
    stale.write_bytes(b"\0" * 1024)
    other_host = ck / ".checkpoint.pt.skffffff-1-abcd.tmp"  # another machine's writer: never ours to delete
    other_host.write_bytes(b"x")
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert not stale.exists() and other_host.exists()


def test_legacy_temp_files_are_cleaned_only_when_old(tmp_path):
    target = tmp_path / "t.bin"
    old = tmp_path / ".t.bin.abcd1234.tmp"
    fresh = tmp_path / ".t.bin.wxyz5678.tmp"
    unrelated = tmp_path / ".t.bin.notours.txt"
    for p in (old, fresh, unrelated):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    atomic_write_bytes(target, b"data")
    assert not old.exists() and fresh.exists() and unrelated.exists()
