"""The training run at a terminal: Ctrl-C as a stop request, the progress bar on stderr.

The end-to-end Ctrl-C (exit 130, a checkpoint that resumes) is test_train's; here the parts
alone, with real signals and a real tqdm bar.
"""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from slm.cli.progress import advance_bar, progress_bar, write_above_bar
from slm.training.schedule import Budget
from slm.training.stop import StopRequest

STEPS = Budget(total_steps=10, max_time_s=0.0, accum_steps=1, tokens_per_step=64, warmup_steps=0)
TIMED = Budget(total_steps=0, max_time_s=30.4, accum_steps=1, tokens_per_step=64, warmup_steps=0)


@pytest.fixture
def sigint_default():
    """Python's own SIGINT handler, whatever the shell that started pytest left."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_first_ctrl_c_asks_to_stop_and_the_second_stops_at_once(sigint_default):
    logged: list[str] = []
    with StopRequest(logged.append) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and "Ctrl-C again" in logged[0]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stop_request_leaves_signals_alone_outside_the_main_thread(sigint_default):
    seen = []

    def run() -> None:
        with StopRequest(print) as stop:
            seen.append(signal.getsignal(signal.SIGINT))
            seen.append(stop.requested)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler, False]


def test_no_bar_off_a_terminal_and_lines_go_to_the_log(capsys):
    bar = progress_bar(STEPS, 0, 0.0)
    assert bar is None
    advance_bar(bar, STEPS, 1, 0.1, 2.5, 1e-3, 100.0)  # a no-op without a bar
    logged: list[str] = []
    write_above_bar(bar, "step 1: val loss 2.5", logged.append)
    assert logged == ["step 1: val loss 2.5"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("budget", "unit", "total"), [(STEPS, "step", 10), (TIMED, "s", 30)])
def test_the_bar_counts_what_the_budget_counts(monkeypatch, capsys, budget, unit, total):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar(budget, 2, 2.0)
    try:
        assert (bar.unit, bar.total, bar.n) == (unit, total, 2)
        advance_bar(bar, budget, 5, 5.0, 2.5, 1e-3, 100.0)
        assert bar.n == 5
        write_above_bar(bar, "step 5: val loss 2.5", lambda _line: None)
    finally:
        bar.close()
    err = capsys.readouterr().err
    assert "step 5: val loss 2.5" in err and "loss 2.500" in err
