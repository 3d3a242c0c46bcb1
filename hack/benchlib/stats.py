"""Summary statistics the way docs/benchmarks.md reports them."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


def summary(values: Sequence[float], unit: str = "ms", scale: float = 1000.0) -> str:
    v = [x * scale for x in values]
    return (
        f"n={len(v)} median={statistics.median(v):.1f}{unit} p99={percentile(v, 99):.1f}{unit} "
        f"min={min(v):.1f}{unit} max={max(v):.1f}{unit}"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (0: none), in seconds."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
