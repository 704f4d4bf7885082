"""Mean and Student-t 95% confidence interval over seeds, shared by ``sparsekit.plots`` and the reproduce summary."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` of Student's t with ``df`` degrees of freedom (table to 30, Cornish-Fisher beyond)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054  # Cornish-Fisher expansion around the normal quantile (error < 1e-4 for df > 30)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float], name: str = "mean_ci") -> tuple[float, float | None, int]:
    """Mean, half-width of its two-sided 95% Student-t interval (None for a single value) and n."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError(f"{name} needs at least one value")
    m = statistics.fmean(vals)
    if len(vals) == 1:
        return m, None, 1
    return m, t_quantile_975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals)), len(vals)
