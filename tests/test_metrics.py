"""slm.training.metrics: metrics.jsonl as a log that resumes, and loss.png redrawn as a run goes."""

from __future__ import annotations

import hashlib
import json

import pytest

from slm.training.loop import TrainRequest, train
from slm.training.metrics import MetricsLog, plot_losses, read_metrics, smooth
from slm.training.progress import TrainProgress

FAST = {"device": "cpu", "dtype": "float32", "sample_tokens": 0, "threads": 1, "compile": "off"}


def test_loss_png_is_redrawn_at_each_evaluation(prepared, tmp_path):
    """After each step the progress display looks at loss.png: new at steps 2, 4, 6 only."""
    run_dir = tmp_path / "run"
    plot = run_dir / "loss.png"
    seen: list[str | None] = []

    class Watcher(TrainProgress):
        def advance(self, budget, step, elapsed_s, loss, lr, tokens_per_s):
            seen.append(hashlib.sha256(plot.read_bytes()).hexdigest() if plot.exists() else None)

    settings = {**FAST, "batch_size": 4, "eval_every": 2, "max_steps": 6}
    request = TrainRequest(
        data=[str(prepared)], out=str(run_dir), preset="tiny", overrides=settings
    )
    train(request, progress=Watcher())
    assert seen[0] is None  # step 1: no evaluation yet, no plot
    assert seen[1] is not None and seen[1] == seen[2] and seen[3] == seen[4]
    assert len({seen[1], seen[3], seen[5]}) == 3  # each evaluation drew a new picture
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_what_it_is_given(tmp_path):
    records = [{"step": s, "tokens": 64 * s, "train_loss": 5.0 / s} for s in range(1, 20)]
    plot_losses(records, tmp_path / "a.png")
    plot_losses([*records[:-1], {**records[-1], "val_loss": 1.0}], tmp_path / "b.png")
    plot_losses([], tmp_path / "empty.png")  # a run stopped before its first step
    pictures = [(tmp_path / n).read_bytes() for n in ("a.png", "b.png", "empty.png")]
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert len(set(pictures)) == 3


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]


def test_a_resumed_log_forgets_the_steps_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.append({"step": step, "train_loss": 1.0 / step})
    log.close()
    resumed = MetricsLog(tmp_path)
    assert [r["step"] for r in resumed.records] == [1, 2, 3, 4, 5]
    resumed.truncate_after(3)
    resumed.append({"step": 4, "train_loss": 0.5})
    resumed.close()
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert json.loads(lines[-1])["train_loss"] == 0.5


def test_smoothing_is_not_pulled_towards_zero_at_the_start():
    assert smooth([3.0] * 10) == pytest.approx([3.0] * 10)
    smoothed = smooth([4.0, 2.0, 2.0, 2.0] * 30)
    assert smoothed[0] == pytest.approx(4.0)


def test_the_smoothed_curve_does_not_lag_behind_a_falling_loss():
    """On a falling, noisy loss the smoothed curve sits on the trend, not above it."""
    import random

    rng = random.Random(0)
    trend = [6.0 - 3.0 * i / 1000 for i in range(1000)]
    noisy = [t + rng.gauss(0, 0.2) for t in trend]
    smoothed = smooth(noisy)
    errors = [s - t for s, t in zip(smoothed, trend, strict=True)]
    assert abs(sum(errors) / len(errors)) < 0.01  # no lag: a past-only average sits ~0.06 high
    assert max(abs(e) for e in errors[50:-50]) < 0.15  # and it does smooth (noise 0.2)
