"""The user's whole path through real `slm` processes: prepare -> train -> generate -> eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def slm(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "slm", *args], capture_output=True, text=True, timeout=timeout
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.slow
def test_prepare_train_generate_eval(tmp_path, make_corpus_text):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(12):
        (texts / f"part{i}.txt").write_text(make_corpus_text(1500, seed=i), encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "run"

    done = slm("prepare", str(texts), "--out", str(data), "--vocab-size", "400")
    assert done.returncode == 0, done.stderr
    assert "tokens" in done.stdout

    done = slm(
        "train",
        str(data),
        "--preset",
        "tiny",
        "--max-steps",
        "60",
        "--eval-every",
        "30",
        "--out",
        str(run),
        "--sample-tokens",
        "8",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the closing sample goes to stdout"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]

    done = slm(
        "generate",
        str(run),
        "The king",
        "--max-new-tokens",
        "20",
        "--seed",
        "1",
        "--json",
        "--num-samples",
        "2",
    )
    assert done.returncode == 0, done.stderr
    samples = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(samples) == 2 and all(s["new_tokens"] >= 1 for s in samples)

    done = slm("eval", str(run), "--json")
    assert done.returncode == 0, done.stderr
    scored = json.loads(done.stdout)
    assert scored["loss"] == pytest.approx(evals[-1], rel=0.15)  # sample vs whole split
    assert scored["bytes"] > 0 and 0 < scored["bpb"] < 8
