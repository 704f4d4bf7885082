"""Helpers shared by benchmark scripts: other-process CPU accounting, quiet waits, machine info.

On a small shared machine a concurrent job slows 2-thread torch down by 10-100x. Scripts record the CPU
time *other* processes used during each timed region (``/proc/stat`` busy time minus this process's
own) and can wait until the machine is quiet first. (Same approach as ``bench_prune.py``.)
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NCPU = os.cpu_count() or 1
_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_s() -> float:
    """CPU seconds spent busy on the whole machine since boot (all CPUs, not idle/iowait); 0 off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _TCK


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Foreign:
    """CPU seconds used by *other* processes between ``start()`` and ``stop()`` (about +-1 tick per CPU)."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._b, self._o, self._t = busy_cpu_s(), own_cpu_s(), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        """``(foreign cpu seconds, wall seconds)``."""
        return (max(0.0, (busy_cpu_s() - self._b) - (own_cpu_s() - self._o)), time.perf_counter() - self._t)


def foreign_share(foreign_s: float, wall_s: float) -> float:
    """Fraction of the machine's CPUs other processes used."""
    return foreign_s / max(1e-9, wall_s * NCPU)


def wait_for_quiet(max_wait_s: float, window_s: float = 0.5, share: float = 0.05) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < ``share`` of the CPUs; returns seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        f = Foreign()
        time.sleep(window_s)
        foreign, wall = f.stop()
        if foreign_share(foreign, wall) <= share:
            break
    return time.perf_counter() - t0


def machine_info() -> dict:
    """Platform, CPU, torch version and threads, sparsekit version and git commit (for the JSON)."""
    import torch

    import sparsekit

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "sparsekit": sparsekit.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        git = ["git", "-C", str(HERE.parent)]
        info["git_commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "--", "sparsekit"],
                                                capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return info
