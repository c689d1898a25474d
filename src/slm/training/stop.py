"""Ctrl-C as a request to stop: finish the step in flight, save, then return.

Owns `StopRequest`, which turns a first Ctrl-C into "stop after this step" so that the
checkpoint holds whole steps (exact resume). What a step is and when to save are
`slm.training.loop`'s; what the user sees while training runs is the caller's
(`slm.training.progress`, and the CLI's bar in `slm.cli.progress`).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from slm.training.progress import Log


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
