"""Faults a user does not choose: kill -9 at random moments, SIGTERM, a full disk, a run
folder in use, settings that cannot fit; and a failed start leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import slm
from slm import checkpoint
from slm.cli.main import main
from slm.errors import SLMError

FAST = {"device": "cpu", "dtype": "float32", "compile": "off", "sample_tokens": 0, "threads": 1}
FLAGS = [
    "--preset", "tiny", "--dtype", "float32", "--sample-tokens", "0",
    "--threads", "1", "--compile", "off", "--batch-size", "4", "--eval-every", "10",
]  # fmt: skip


def _start(args: list[str], ignore_sigint: bool = False) -> subprocess.Popen:
    """A real `slm` process; with `ignore_sigint`, as `nohup cmd &` starts one."""
    disposition = signal.SIG_IGN if ignore_sigint else signal.SIG_DFL
    return subprocess.Popen(
        [sys.executable, "-m", "slm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _steps(run_dir) and _steps(run_dir)[-1] >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never came: {proc.communicate()[1] if proc.poll() else ''}")


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            break
    return steps


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").open()]


# --------------------------------------------------------------------------- signals


def test_sigterm_saves_and_exits_143_even_when_sigint_is_ignored(prepared, tmp_path):
    out = tmp_path / "run"
    proc = _start(
        ["train", str(prepared), *FLAGS, "--max-steps", "100000", "--out", str(out)], True
    )
    _wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGINT)  # ignored, as in a background job
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopping after this step" in err and "Traceback" not in err
    state = checkpoint.load_train_state(out)
    assert state["step"] == _steps(out)[-1] >= 2  # the checkpoint holds the last logged step
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_kill_9_at_random_moments_never_loses_the_run(prepared, tmp_path):
    """Ten kills, each resumed: the folder always loads and resumes, metrics.jsonl stays
    whole, and the losses equal those of a run that was never stopped."""
    steps = 60
    args = [str(prepared), *FLAGS, "--max-steps", str(steps), "--save-every", "1"]
    straight = tmp_path / "straight"
    assert main(["train", *args, "--out", str(straight)]) == 0
    run = tmp_path / "killed"
    rng = random.Random(0)
    proc = _start(["train", *args, "--out", str(run)])
    kills = resumed = 0
    while True:
        _wait_for_step(run, 1, proc)
        if kills == 0:  # while it runs, the folder is taken
            assert main(["train", "--resume", str(run)]) == 1
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            break
        proc.kill()  # SIGKILL: nothing runs, nothing is flushed
        proc.wait()
        kills += 1
        # after every kill: a loadable model, a resumable state, whole metric lines
        model = slm.load(run, device="cpu")
        assert isinstance(model.generate("", max_new_tokens=4, seed=0), str)
        state = checkpoint.load_train_state(run)
        assert state["step"] >= 1
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert all(json.loads(line) for line in lines)  # no torn line
        if kills == 10:
            break
        proc = _start(["train", "--resume", str(run)])
        resumed += 1
    if proc.poll() is None or kills == 10:
        assert main(["train", "--resume", str(run)]) in (0, 2)  # 2: it had already finished
    print(f"{kills} kills, {resumed} resumed while running")
    assert kills == 10
    assert _steps(run) == list(range(1, steps + 1))  # no gap, no duplicate
    assert _losses(run) == pytest.approx(_losses(straight), rel=1e-6, abs=1e-6)


# --------------------------------------------------------------------------- disk full


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(prepared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    slm.train(str(prepared), out=run, preset="tiny", max_steps=10, stop_after=4, **FAST)
    before = (run / checkpoint.WEIGHTS_FILE).read_bytes()

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(SLMError) as caught:
        slm.train(resume=run, eval_every=2)
    message = str(caught.value)
    assert "cannot write the checkpoint" in message and str(run) in message
    assert "No space left on device" in message and "MB free" in message
    assert (run / checkpoint.WEIGHTS_FILE).read_bytes() == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    result = slm.train(resume=run)  # space is back: it resumes from the kept checkpoint
    assert result.step == 10


# --------------------------------------------------------------------------- refused up front


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(prepared), *FLAGS, "--batch-size", "200000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "GB of memory" in err and "is available" in err
    assert "Traceback" not in err and not out.exists()


def test_a_failed_start_removes_the_folder_it_created_and_no_other(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["train", str(tmp_path / "nothere"), "--out", str(out)]) == 2
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["train", str(tmp_path / "nothere"), "--out", str(mine)]) == 2
    assert mine.is_dir()  # the user's own folder stays
    assert "source not found" in capsys.readouterr().err


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(prepared, tmp_path):
    run = tmp_path / "run"
    slm.train(str(prepared), out=run, preset="tiny", max_steps=6, stop_after=2, **FAST)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    assert slm.train(resume=run).step == 6  # a dead owner's lock is stale
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / ".lock").write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        with pytest.raises(SLMError, match=f"in use by process {sleeper.pid}"):
            slm.train(resume=run)
    finally:
        sleeper.kill()
        sleeper.wait()
