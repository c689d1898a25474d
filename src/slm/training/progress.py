"""What the training loop reports while it runs, and to whom.

The loop calls a `TrainProgress` at the start, after each step and for each line worth
showing (an evaluation, a sample). The default passes lines to a `log` function and ignores
the rest, so `slm.train` from Python or a notebook stays quiet unless asked; a caller that
wants a progress bar subclasses it (the CLI's tqdm bar is `slm.cli.progress`). The loop never
imports a terminal or a widget library itself.
"""

from __future__ import annotations

from collections.abc import Callable

from slm.training.schedule import Budget

Log = Callable[[str], None]


def quiet(_message: str) -> None:
    """A log that drops every message."""


class TrainProgress:
    """Receives the loop's events; override what you want to show."""

    def __init__(self, log: Log = quiet):
        self.log = log

    def start(self, budget: Budget, step: int, elapsed_s: float) -> None:
        """Training starts (or resumes) at `step`, `elapsed_s` seconds into its budget."""

    def advance(
        self,
        budget: Budget,
        step: int,
        elapsed_s: float,
        loss: float,
        lr: float,
        tokens_per_s: float,
    ) -> None:
        """One optimizer step finished."""

    def write(self, line: str) -> None:
        """A line for the user (an evaluation result, a sample)."""
        self.log(line)

    def close(self) -> None:
        """Training stopped, for whatever reason."""
