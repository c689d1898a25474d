"""The training run at a terminal: a tqdm bar on stderr, lines written above it.

`TerminalProgress` is the CLI's `slm.training.progress.TrainProgress`: a bar (only when
stderr is a TTY) that counts steps or seconds, whichever the budget is counted in, with the
loss, learning rate and speed beside it; lines written above the bar so it never overdraws
them. Off a TTY (a log file, CI) it is the plain log.
"""

from __future__ import annotations

import sys
from typing import Any

from slm.training.progress import Log, TrainProgress
from slm.training.schedule import Budget


class TerminalProgress(TrainProgress):
    def __init__(self, log: Log):
        super().__init__(log)
        self.bar: Any = None

    def start(self, budget: Budget, step: int, elapsed_s: float) -> None:
        self.bar = progress_bar(budget, step, elapsed_s)

    def advance(
        self,
        budget: Budget,
        step: int,
        elapsed_s: float,
        loss: float,
        lr: float,
        tokens_per_s: float,
    ) -> None:
        advance_bar(self.bar, budget, step, elapsed_s, loss, lr, tokens_per_s)

    def write(self, line: str) -> None:
        write_above_bar(self.bar, line, self.log)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
