"""Ctrl-C and SIGTERM as a request to stop: finish the step in flight, save, then return.

Owns `StopRequest`, which turns a first Ctrl-C, or a SIGTERM (what `kill`, systemd, Slurm
and Docker send), into "stop after this step" so that the checkpoint holds whole steps
(exact resume). What a step is and when to save are
`slm.training.loop`'s; what the user sees while training runs is the caller's
(`slm.training.progress`, and the CLI's bar in `slm.cli.progress`).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from slm.training.progress import Log


class StopRequest:
    """Ctrl-C or SIGTERM asks training to stop at the end of the current step, so that the
    checkpoint holds a whole step (exact resume); a second one stops at once.

    Installed only in the main thread. SIGINT is left alone where it is ignored (a background
    job started by a shell ignores it on purpose); SIGTERM is always caught, so a job that
    cannot be Ctrl-C'd can still be stopped cleanly with `kill PID`.
    """

    def __init__(self, log: Log):
        self.log = log
        self.requested = False
        self.signal_name = ""  # "SIGINT" or "SIGTERM": which one asked
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(signum)
                if signum == signal.SIGINT and current in (signal.SIG_IGN, None):
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        again = "Ctrl-C" if signum == signal.SIGINT else "send it"
        self.log(
            f"\n{self.signal_name}: stopping after this step to save a checkpoint "
            f"({again} again to quit now)"
        )

    def __exit__(self, *_: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
