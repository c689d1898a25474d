"""The training loss: label smoothing, and what a run reports beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slm.cli.main import main
from slm.config import TrainConfig
from slm.data.prepare import prepare
from slm.training.loop import TrainRequest, train
from slm.training.optimizer import smoothed_cross_entropy
from slm.training.run_folder import resumed_train_config

FAST = {"device": "cpu", "dtype": "float32", "sample_tokens": 0, "threads": 1, "compile": "off"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    colours = ["red", "blue", "green"]
    for i in range(20):
        lines = [f"line {j} of note {i}: the {colours[j % 3]} fox" for j in range(30)]
        (src / f"note{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([str(src)], out, vocab_size=300, val_fraction=0.1)
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.3])
def test_smoothed_loss_is_torchs_label_smoothing_and_the_report_is_plain(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 3
    targets = torch.randint(0, 11, (3, 7))
    targets[0, :4] = -100  # a chat fine-tune's prompt tokens: counted in neither
    loss, plain = smoothed_cross_entropy(logits, targets, smoothing)
    flat, flat_targets = logits.flatten(0, 1), targets.flatten()
    expected = F.cross_entropy(flat, flat_targets, label_smoothing=smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert plain.item() == pytest.approx(F.cross_entropy(flat, flat_targets).item(), rel=1e-6)


def _first_losses(prepared: Path, out: Path, smoothing: float) -> list[float]:
    settings = {**FAST, "batch_size": 4, "max_steps": 3, "warmup_steps": 0}
    settings["label_smoothing"] = smoothing
    run_dir = train(TrainRequest([str(prepared)], str(out), preset="tiny", overrides=settings))
    rows = (run_dir.run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(row)["train_loss"] for row in rows if "train_loss" in json.loads(row)]


def test_a_smoothed_run_trains_differently_and_logs_the_plain_loss(prepared, tmp_path):
    """The first step's loss is the same model on the same batch, so its logged figure is
    the same with smoothing as without; the steps after it differ, since the smoothing
    changes the updates."""
    plain = _first_losses(prepared, tmp_path / "plain", 0.0)
    smoothed = _first_losses(prepared, tmp_path / "smoothed", 0.9)
    assert smoothed[0] == pytest.approx(plain[0], rel=1e-6)
    assert abs(smoothed[2] - plain[2]) > 0.01


def test_label_smoothing_of_one_or_more_is_a_usage_error(prepared, tmp_path, capsys):
    args = ["train", str(prepared), "--preset", "tiny", "--out", str(tmp_path / "r")]
    assert main([*args, "--label-smoothing", "1"]) == 2
    err = capsys.readouterr().err
    assert "--label-smoothing" in err and "Traceback" not in err


def test_a_run_saved_before_label_smoothing_resumes_without_it(tmp_path):
    """Its train_config.json has no "label_smoothing": it trained without, and goes on so."""
    saved = TrainConfig().to_dict()
    del saved["label_smoothing"]
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert resumed_train_config(tmp_path, {}, {}, new_inputs=False).label_smoothing == 0.0
    assert TrainConfig().label_smoothing > 0  # a new run smooths by default
