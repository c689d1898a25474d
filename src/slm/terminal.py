"""The training run at a terminal: the progress bar on stderr, and Ctrl-C as a request to stop.

Owns what a person at the terminal sees and does while `slm train` runs: a tqdm bar (only
when stderr is a TTY) that counts steps or seconds, whichever the budget is counted in; lines
written above the bar; and `StopRequest`, which turns a first Ctrl-C into "stop after this
step" so the checkpoint holds whole steps. What a step is, when to save and what to log are
`slm.train`'s; the budget itself is `slm.schedule`'s.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from slm.schedule import Budget

Log = Callable[[str], None]


class StopRequest:
    """Ctrl-C asks training to stop at the end of the current step, so that the checkpoint
    holds a whole step (exact resume); a second Ctrl-C stops at once.

    Installed only in the main thread and only where SIGINT is not ignored (a background
    job started by a shell ignores it on purpose).
    """

    def __init__(self, log: Log):
        self.log = log
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current not in (signal.SIG_IGN, None):
                self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\nstopping after this step to save a checkpoint (Ctrl-C again to quit now)")

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


# --------------------------------------------------------------------------- progress bar


def progress_bar(budget: Budget, step: int, elapsed_s: float) -> Any:
    """A tqdm bar in steps (a step budget) or seconds (a time budget); None off a TTY."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    if budget.total_steps:
        return tqdm(total=budget.total_steps, initial=step, unit="step", dynamic_ncols=True)
    return tqdm(
        total=round(budget.max_time_s),
        initial=round(elapsed_s),
        unit="s",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]",
        dynamic_ncols=True,
    )


def advance_bar(
    bar: Any,
    budget: Budget,
    step: int,
    elapsed_s: float,
    loss: float,
    lr: float,
    tokens_per_s: float,
) -> None:
    if bar is None:
        return
    if budget.total_steps:
        bar.update(step - bar.n)
    else:
        bar.update(min(elapsed_s, budget.max_time_s) - bar.n)
    bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s", refresh=False)


def write_above_bar(bar: Any, line: str, log: Log) -> None:
    """A line that must not be overdrawn by the bar; without a bar, the usual log."""
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        log(line)
