"""The schedule: learning rate warmup and decay, and budgets in steps, tokens, epochs, time."""

from __future__ import annotations

import itertools
import math

import pytest

from slm.config import ModelConfig, TrainConfig, preset
from slm.training.schedule import lr_at, muon_momentum_at, plan_budget


def test_muon_momentum_rises_from_085_to_095_over_300_steps():
    curve = [muon_momentum_at(step) for step in range(400)]
    assert curve[0] == pytest.approx(0.85 + 0.1 / 300)
    assert curve[149] == pytest.approx(0.90)
    assert curve[299] == pytest.approx(0.95) and set(curve[299:]) == {curve[299]}
    assert all(a < b for a, b in itertools.pairwise(curve[:300]))


def test_cosine_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-3, min_lr_ratio=0.1, lr_schedule="cosine")
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


def test_wsd_holds_the_peak_then_decays_as_one_minus_sqrt_over_the_last_30_percent():
    cfg = TrainConfig(lr=1e-3, min_lr_ratio=0.0, lr_schedule="wsd")
    assert lr_at(0, 0.0, cfg, warmup_steps=10) == pytest.approx(1e-4)
    for progress in (0.1, 0.4, 0.7):  # after warmup: the peak, however far in
        assert lr_at(500, progress, cfg, warmup_steps=10) == pytest.approx(1e-3)
    assert lr_at(500, 0.85, cfg, warmup_steps=10) == pytest.approx((1 - 0.5**0.5) * 1e-3)
    assert lr_at(500, 0.97, cfg, warmup_steps=10) == pytest.approx((1 - 0.9**0.5) * 1e-3)
    assert lr_at(1000, 1.0, cfg, warmup_steps=10) == 0.0
    floor = TrainConfig(lr=1e-3, min_lr_ratio=0.1, lr_schedule="wsd")
    assert lr_at(1000, 1.0, floor, warmup_steps=10) == pytest.approx(1e-4)
    curve = [lr_at(s, s / 100, cfg, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(curve))


def test_an_unknown_schedule_is_a_usage_error():
    from slm.errors import SLMError

    with pytest.raises(SLMError, match="lr-schedule"):
        TrainConfig(lr_schedule="linear")


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
        cfg.lr * cfg.min_lr_ratio, abs=0.005 * cfg.lr
    )
    assert not budget.done(999, 299.9) and budget.done(999, 300.0)
    # time kept back for the run's end: the schedule ends that much earlier, and so do steps
    assert budget.progress(999, 295.0, startup, reserve_s=5.0) == pytest.approx(1.0)
    assert budget.progress(999, 290.0, startup, reserve_s=5.0) < 1.0
    assert budget.done(999, 295.0, reserve_s=5.0) and not budget.done(999, 294.9, reserve_s=5.0)


def test_a_run_saved_before_the_schedule_setting_resumes_with_its_cosine(
    prepared, tmp_path
) -> None:
    """Such a run's train_config.json has no "lr_schedule": it keeps the cosine it began
    with, not today's default, so the resumed steps' rates continue its curve."""
    import json

    from slm.training.loop import TrainRequest, train

    settings = {"threads": 1, "compile": "off", "sample_tokens": 0, "batch_size": 4}
    settings.update(max_steps=10, stop_after=4, warmup_steps=2)
    settings.update(lr_schedule="cosine", min_lr_ratio=0.1)  # what such runs saved
    out = str(tmp_path / "old")
    run_dir = train(TrainRequest([str(prepared)], out, preset="tiny", overrides=settings)).run_dir
    config_file = run_dir / "train_config.json"
    saved = json.loads(config_file.read_text())
    del saved["lr_schedule"]
    config_file.write_text(json.dumps(saved))
    train(TrainRequest(resume=str(run_dir), overrides={}))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [row["lr"] for row in rows if "lr" in row]
    cfg = TrainConfig(lr=saved["lr"], min_lr_ratio=saved["min_lr_ratio"], lr_schedule="cosine")
    assert len(rates) == 10
    assert rates == pytest.approx([lr_at(s, s / 10, cfg, 2) for s in range(10)])
