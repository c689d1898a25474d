"""torchrun: 2 processes with gloo train exactly what 1 process with the same global batch
trains, resume across world sizes, and the batch sampler's rank slices."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.cli.main import main
from slm.data.prepared import BatchSampler

FLAGS = [
    "--preset", "tiny", "--eval-every", "4", "--sample-tokens", "0", "--compile", "off",
    "--dtype", "float32", "--threads", "1", "--seed", "3",
]  # fmt: skip


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun is not installed")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--standalone", "-m", "slm", *args]  # --standalone: a free local port
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def test_rank_slices_of_a_global_batch_are_the_single_process_batch():
    tokens = np.arange(10_000, dtype=np.uint16)
    whole = BatchSampler(tokens, batch_size=6, context_len=16, seed=5)
    ranks = [BatchSampler(tokens, 3, 16, 5, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = whole.next_batch()
        parts = [s.next_batch() for s in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(prepared, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _torchrun(["train", str(prepared), *FLAGS, "--max-steps", "8", "--batch-size", "4",
                      "--out", str(two)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes" in proc.stderr
    # one process, the same 8 windows a step: a batch of 4 accumulated twice
    tokens_per_step = 8 * 64
    assert main(["train", str(prepared), *FLAGS, "--max-steps", "8", "--batch-size", "4",
                 "--tokens-per-step", str(tokens_per_step), "--out", str(one)]) == 0  # fmt: skip
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"]
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
        assert y.get("val_loss", 0) == pytest.approx(x.get("val_loss", 0), rel=1e-5)
    assert not (two / ".lock").exists()


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process_and_back(prepared, tmp_path):
    straight, hopping = tmp_path / "straight", tmp_path / "hopping"
    common = [*FLAGS, "--max-steps", "12", "--batch-size", "4", "--tokens-per-step", "512"]
    assert main(["train", str(prepared), *common, "--out", str(straight)]) == 0
    # steps 1-4 on 2 processes, 5-8 on 1, 9-12 on 2 again
    proc = _torchrun(["train", str(prepared), *common, "--stop-after", "4", "--out", str(hopping)])
    assert proc.returncode == 130 or proc.returncode == 0, proc.stderr[-3000:]
    assert main(["train", "--resume", str(hopping), "--stop-after", "8"]) in (0, 130)
    proc = _torchrun(["train", "--resume", str(hopping)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _metrics(straight), _metrics(hopping)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["train_loss"] for r in b] == pytest.approx([r["train_loss"] for r in a], rel=1e-5)


def _start_torchrun(args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    return subprocess.Popen(
        [*command, "--standalone", "-m", "slm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_metrics(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and (run_dir / "train_state.pt").exists():
            return
        time.sleep(0.1)
    raise AssertionError(proc.communicate()[1][-3000:] if proc.poll() is not None else "timeout")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigterm to torchrun", "kill -9 of one rank"])
def test_the_ranks_stop_together_and_the_checkpoint_stays_whole(prepared, tmp_path, fault):
    import signal
    import time

    from slm import checkpoint

    run = tmp_path / "run"
    args = [*FLAGS, "--max-steps", "100000", "--batch-size", "4", "--save-every", "5"]
    proc = _start_torchrun(["train", str(prepared), *args, "--out", str(run)])
    _wait_for_metrics(run, proc)
    start = time.time()
    if fault == "sigterm to torchrun":
        proc.send_signal(signal.SIGTERM)
    else:
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        os_pids = [int(p) for p in workers.stdout.split()]
        assert len(os_pids) == 2, workers.stdout
        subprocess.run(["kill", "-9", str(os_pids[-1])], check=True)
    _, err = proc.communicate(timeout=120)
    assert time.time() - start < 60  # no rank hangs on a collective
    assert proc.returncode != 0
    state = checkpoint.load_train_state(run)  # the last checkpoint is whole and loadable
    assert checkpoint.load_model(run) is not None and state["step"] >= 5
    if fault == "sigterm to torchrun":
        assert "SIGTERM: stopping after this step" in err
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
        assert state["step"] == steps[-1]  # both ranks stopped at the step that was saved
