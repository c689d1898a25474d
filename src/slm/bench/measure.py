"""Small measuring tools shared by the benchmarks: repeat statistics and peak memory.

Kept below `bench` and `bench_generate` so that neither imports the other's internals.
"""

from __future__ import annotations

import resource
import statistics
import sys


def summarize(values: list[float]) -> dict[str, float]:
    """Median of repeats and the spread (max / min - 1): how noisy the measurement was."""
    return {
        "median": statistics.median(values),
        "spread": max(values) / min(values) - 1,
        "repeats": len(values),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    Linux's /proc/self/status VmHWM is the process's own high-water mark; ru_maxrss can carry
    the parent's size into a child started by fork/vfork, so it is only the fallback.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
        return kib / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
