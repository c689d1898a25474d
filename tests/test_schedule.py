"""The schedule: learning rate warmup and decay, and budgets in steps, tokens, epochs, time."""

from __future__ import annotations

import itertools
import math

import pytest

from slm.config import ModelConfig, TrainConfig, preset
from slm.training.schedule import lr_at, plan_budget


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, 0.0, cfg, warmup_steps=10) == pytest.approx(1e-4)
    assert lr_at(9, 0.0, cfg, warmup_steps=10) == pytest.approx(1e-3)
    # A budget (e.g. of time) that ends before warmup_steps: warmup ends at a tenth of it.
    assert lr_at(2, 0.05, cfg, warmup_steps=1000) == pytest.approx(0.5e-3, rel=0.02)
    assert lr_at(3, 0.1, cfg, warmup_steps=1000) == pytest.approx(1e-3, rel=0.03)
    assert lr_at(500, 0.5, cfg, warmup_steps=10) == pytest.approx(0.55e-3)
    assert lr_at(1000, 1.0, cfg, warmup_steps=10) == pytest.approx(1e-4)
    decay = [lr_at(s, s / 100, cfg, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert lr_at(0, 0.0, cfg, warmup_steps=0) == pytest.approx(1e-3)


def test_budget_from_tokens_epochs_and_accumulation():
    model = ModelConfig(**preset("tiny"))  # context 64
    budget = plan_budget(TrainConfig(batch_size=4, max_tokens=256 * 10), model, train_tokens=10_000)
    assert (budget.total_steps, budget.tokens_per_step, budget.accum_steps) == (10, 256, 1)
    budget = plan_budget(TrainConfig(batch_size=4, tokens_per_step=1000, epochs=2), model, 10_000)
    assert budget.accum_steps == 4 and budget.tokens_per_step == 1024
    assert budget.total_steps == math.ceil(20_000 / 1024)
    both = plan_budget(TrainConfig(max_steps=5, max_time="1h"), model, 10_000)
    assert both.done(5, 1.0) and both.done(1, 3600.0) and not both.done(4, 10.0)


def test_a_time_budget_counts_from_when_steps_began_to_flow():
    """Compilation in the first step is not training: warmup and decay start after it."""
    from slm.config import TrainConfig
    from slm.training.schedule import Budget, lr_at

    budget = Budget(
        total_steps=0, max_time_s=300, accum_steps=1, tokens_per_step=1, warmup_steps=100
    )
    cfg = TrainConfig(lr=2e-3, max_time="5m", warmup_steps=100)
    startup = 46.0  # a slow compile
    # right after compiling, the schedule is at its very start: warmup from near zero
    assert budget.progress(1, startup, startup) == 0.0
    assert lr_at(1, budget.progress(1, startup, startup), cfg, 100) < 0.05 * cfg.lr
    # without the offset the same moment was 15% into the run, past a 10% warmup
    assert lr_at(1, budget.progress(1, startup), cfg, 100) > 0.9 * cfg.lr
    # the cosine still ends with the budget, and the budget still ends at 300 s of wall time
    assert budget.progress(999, 299.9, startup) == pytest.approx(1.0, abs=1e-3)
    assert lr_at(999, budget.progress(999, 299.9, startup), cfg, 100) == pytest.approx(
        cfg.lr * cfg.min_lr_ratio, rel=1e-3
    )
    assert not budget.done(999, 299.9) and budget.done(999, 300.0)
