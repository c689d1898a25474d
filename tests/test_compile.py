"""torch.compile in training: when it is on, that it trains as eager does, and its failure.

The real compiler costs 15-40 s on a 2-core CPU the first time (its on-disk cache makes later
compiles of the same graph a few seconds), so one slow module fixture compiles a tiny run and
both slow tests use it; the rest inject what `torch.compile` does (records, or fails).
"""

from __future__ import annotations

import time

import pytest
import torch

from slm.training.loop import TrainRequest, train
from slm.training.metrics import read_metrics
from slm.training.optimizer import want_compile
from slm.training.schedule import Budget

FAST = {"device": "cpu", "dtype": "float32", "sample_tokens": 0, "threads": 1, "batch_size": 8}


def _train(prepared, out, log=None, **overrides) -> list[dict]:
    request = TrainRequest(
        data=[str(prepared)], out=str(out), preset="tiny", overrides={**FAST, **overrides}
    )
    run_dir = train(request, log=log or (lambda _m: None)).run_dir
    return read_metrics(run_dir / "metrics.jsonl")


def _budget(steps: int = 0, seconds: float = 0.0) -> Budget:
    return Budget(steps, seconds, accum_steps=1, tokens_per_step=512, warmup_steps=100)


# --------------------------------------------------------------------------- when


@pytest.mark.parametrize(
    ("steps", "seconds", "expected"),
    [(999, 0, False), (1000, 0, True), (0, 119, False), (0, 120, True), (50, 600, True)],
)
def test_auto_compiles_cpu_runs_long_enough_to_repay_it(steps, seconds, expected):
    assert want_compile("auto", torch.device("cpu"), _budget(steps, seconds)) is expected


def test_auto_always_compiles_on_cuda_and_the_flag_overrides():
    assert want_compile("auto", torch.device("cuda"), _budget(steps=10))
    assert not want_compile("off", torch.device("cuda"), _budget(steps=10_000))
    assert want_compile("on", torch.device("cpu"), _budget(steps=10))
    assert not want_compile("auto", torch.device("mps"), _budget(seconds=3600))


@pytest.fixture
def compile_calls(monkeypatch) -> list:
    """torch.compile made a recorder that returns the function as it is (eager)."""
    calls: list = []

    def fake_compile(fn, *args, **kwargs):
        calls.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def test_a_short_cpu_run_is_not_compiled_and_a_long_one_is(prepared, tmp_path, compile_calls):
    _train(prepared, tmp_path / "short", max_steps=2, compile="auto")
    assert compile_calls == []
    _train(prepared, tmp_path / "long", max_steps=1000, stop_after=2, compile="auto")
    assert len(compile_calls) == 1


# --------------------------------------------------------------------------- failure


def test_a_compile_failure_falls_back_to_eager_with_one_warning(prepared, tmp_path, monkeypatch):
    """No C++ toolchain: compilation fails at the first call; the run goes on eagerly."""

    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("no working C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    messages: list[str] = []
    fallen_back = _train(prepared, tmp_path / "a", messages.append, max_steps=5, compile="on")
    warnings = [m for m in messages if "torch.compile failed" in m]
    assert len(warnings) == 1 and "no working C++ compiler" in warnings[0]
    eager = _train(prepared, tmp_path / "b", max_steps=5, compile="off")
    assert [r["train_loss"] for r in fallen_back] == [r["train_loss"] for r in eager]


# --------------------------------------------------------------------------- the real compiler


@pytest.fixture(scope="module")
def compiled_losses(prepared, tmp_path_factory) -> list[float]:
    """Train losses of a 12-step compiled run (this compiles the graph, 15-40 s, once)."""
    out = tmp_path_factory.mktemp("compiled") / "run"
    return [r["train_loss"] for r in _train(prepared, out, max_steps=12, compile="on")]


@pytest.mark.slow
def test_a_compiled_run_trains_as_the_eager_one_does(compiled_losses, prepared, tmp_path):
    eager = [r["train_loss"] for r in _train(prepared, tmp_path / "eager", max_steps=12)]
    assert compiled_losses == pytest.approx(eager, rel=1e-3)
    assert compiled_losses[-1] < compiled_losses[0] - 0.5


@pytest.mark.slow
def test_with_a_time_budget_the_schedule_starts_after_compilation(
    compiled_losses, prepared, tmp_path, monkeypatch
):
    """Issue 16: the learning rate after compilation rises from near zero, and the last
    step's rate is near the floor.

    The fixture compiled this graph already, so in this process compiling it again is
    nearly free; a 5 s pause added to the compiled function's first call stands for a cold
    compile, whatever the caches hold.
    """
    real_compile = torch.compile

    def slow_compile(fn, *args, **kwargs):
        compiled, first = real_compile(fn, *args, **kwargs), [True]

        def call(*a, **k):
            if first:
                first.clear()
                time.sleep(5.0)
            return compiled(*a, **k)

        return call

    monkeypatch.setattr(torch, "compile", slow_compile)
    max_time_s, peak, floor = 15.0, 2e-3, 2e-4
    records = _train(
        prepared,
        tmp_path / "run",
        max_time=f"{max_time_s:g}s",
        compile="on",
        lr=peak,
        min_lr_ratio=floor / peak,
        eval_every=100_000,
    )
    lrs = [r["lr"] for r in records]
    startup_s = records[0]["elapsed_s"]
    assert 5.0 <= startup_s < 0.6 * max_time_s, f"the first step took {startup_s} s"
    assert len(lrs) > 50
    # A schedule that counted the startup would be a third through: warmup over, decaying.
    assert lrs[1] < 0.05 * peak  # the first step after compilation: warmup starts here
    assert lrs[1] < lrs[10] < lrs[40] and max(lrs) > 0.9 * peak
    assert lrs[-1] < floor + 0.05 * (peak - floor)
