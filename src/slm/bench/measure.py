"""Small measuring tools shared by the benchmarks: repeat statistics and peak memory.

Kept below `bench` and `bench_generate` so that neither imports the other's internals.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable


def summarize(values: list[float]) -> dict[str, float]:
    """Median of repeats and the spread (max / min - 1): how noisy the measurement was."""
    return {
        "median": statistics.median(values),
        "spread": max(values) / min(values) - 1,
        "repeats": len(values),
    }


def interleaved_rates(
    steps: dict[str, tuple[Callable[[], None], int]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Tokens/s of each (step, tokens a step) over rounds in which they take turns.

    Interleaving lets every step see the same neighbours' load, so ratios between them hold
    on a shared machine where absolute rates drift. The first round is not counted: it
    settles caches (and any compilation a step still does on its second call).
    """
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds + 1):
        for name, (step, tokens) in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            if round_:
                rates[name].append(per_round * tokens / (time.perf_counter() - start))
    return rates


def ratio_summary(values: list[float], baseline: list[float]) -> str:
    """The round-by-round ratio of two interleaved rates: "1.12x (1.01-1.30)"."""
    ratios = [a / b for a, b in zip(values, baseline, strict=True)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def rates_table(rates: dict[str, list[float]], baseline: str, label: str) -> str:
    """A Markdown table of interleaved rates: each row's median tokens/s with its spread,
    and its round-by-round ratio to the `baseline` row's."""
    lines = [f"| {label} | tokens/s (spread) | / {baseline} (rounds) |", "|---|---|---|"]
    for name, values in rates.items():
        summary = summarize(values)
        lines.append(
            f"| {name} | {summary['median']:,.0f} ({summary['spread']:.0%}) "
            f"| {ratio_summary(values, rates[baseline])} |"
        )
    return "\n".join(lines) + "\n"


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
