"""`slm train` end to end: each budget stops the run where it says; raw text and no text at all.

Through `main([...])`, as a user types it; the budget maths alone is test_schedule.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from slm import checkpoint
from slm.cli.main import main
from slm.training.metrics import read_metrics

QUIET = ["--preset", "tiny", "--sample-tokens", "0", "--threads", "1", "--compile", "off"]
QUIET += ["--dtype", "float32", "--device", "cpu", "--eval-every", "1000"]


def _train(capsys, *argv: str) -> list[dict]:
    code = main(["train", *argv, *QUIET])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    out = Path(argv[argv.index("--out") + 1])
    return read_metrics(out / "metrics.jsonl")


def test_max_tokens_stops_at_the_first_step_that_reaches_it(prepared, tmp_path, capsys):
    # 2 micro-batches of 4 x 64 tokens: 512 tokens a step, so 5,000 tokens take 10 steps.
    flags = ["--batch-size", "4", "--tokens-per-step", "512", "--max-tokens", "5000"]
    records = _train(capsys, str(prepared), "--out", str(tmp_path / "run"), *flags)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert records[-1]["tokens"] == 5120


def test_epochs_stop_after_that_many_passes_over_the_train_tokens(prepared, tmp_path, capsys):
    train_tokens = json.loads((prepared / "meta.json").read_text())["splits"]["train"]["tokens"]
    flags = ["--batch-size", "8", "--epochs", "0.5"]  # 512 tokens a step
    records = _train(capsys, str(prepared), "--out", str(tmp_path / "run"), *flags)
    assert records[-1]["step"] == math.ceil(0.5 * train_tokens / 512) == len(records)
    assert records[-1]["tokens"] >= 0.5 * train_tokens > records[-2]["tokens"]


def test_max_time_covers_the_whole_command(prepared, tmp_path, capsys, monkeypatch):
    """--max-time is how long the user waits: the run keeps back the time its end takes (the
    final evaluation, sample and save, measured on the evaluations before it), so the command
    returns within the budget, and the end is still evaluated and saved."""
    from slm.training import loop

    evaluate = loop.evaluate_windows

    def slow_evaluation(*args, **kwargs):
        time.sleep(0.4)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_windows", slow_evaluation)
    out = tmp_path / "run"
    argv = ["train", str(prepared), "--out", str(out), *QUIET, "--max-time", "8s"]
    started = time.perf_counter()
    code = main([*argv, "--eval-every", "20", "--sample-tokens", "8"])
    wall_s = time.perf_counter() - started
    assert code == 0, capsys.readouterr().err
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) > 20 and "val_loss" in records[19]
    assert wall_s <= 8.0 + 0.25, f"the command took {wall_s:.2f} s of an 8 s budget"
    assert records[-1]["elapsed_s"] <= 8.0 - 0.4  # the last evaluation's time was kept back
    assert "val_loss" in records[-1]  # the end of a budget is evaluated and saved
    assert checkpoint.load_train_state(out)["step"] == records[-1]["step"]


def test_raw_text_is_prepared_into_the_run_folder(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--out", str(out), "--vocab-size", "300", "--max-steps", "2"]
    assert len(_train(capsys, str(corpus_dir), *flags)) == 2
    data = out / "data"
    meta = json.loads((data / "meta.json").read_text())
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 20  # every file
    assert (data / "train.bin").stat().st_size == 2 * splits["train"]["tokens"]  # uint16 ids
    assert (out / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == meta["vocab_size"]
    assert meta["vocab_size"] <= 300  # --vocab-size, not the preset's 512
    assert json.loads((out / "run.json").read_text())["data"] == str(data)


@pytest.mark.slow
def test_slm_train_with_no_data_trains_on_the_built_in_corpus(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # with no --out the run goes under ./runs/
    argv = ["train", "--max-steps", "2", "--sample-tokens", "8"]
    code = main([*argv, "--preset", "tiny", "--threads", "1", "--compile", "off"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    assert "the built-in Shakespeare corpus" in err
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "data" / "meta.json").read_text())
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] >= 30  # the plays
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 2
    assert out.strip()  # the closing sample is the product, on stdout
