"""Training: learning, checkpoints, resume and interruption (the schedule: test_schedule)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slm import checkpoint
from slm.cli.main import main
from slm.data.prepare import prepare
from slm.data.prepared import BatchSampler
from slm.errors import SLMError
from slm.training.loop import Run, TrainRequest, train
from slm.training.progress import quiet
from slm.training.run_folder import RunGuard, check_resume_point
from slm.training.setup import new_run

FAST = {"device": "cpu", "dtype": "float32", "sample_tokens": 0, "threads": 1}


def _corpus_text(n_docs: int = 40) -> list[str]:
    """Small documents with structure a tiny model can learn in seconds."""
    animals = ["cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear"]
    verbs = ["sees", "likes", "chases", "follows", "finds"]
    docs = []
    for d in range(n_docs):
        lines = [
            f"The {animals[(d + i) % 8]} {verbs[(d * i) % 5]} the {animals[(d + 3 * i) % 8]}."
            for i in range(12)
        ]
        docs.append("\n".join(lines) + "\n")
    return docs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(_corpus_text()):
        (src / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([str(src)], out, vocab_size=320, val_fraction=0.1, min_train_tokens=65)
    return out


def _run(prepared: Path, out: Path, **overrides) -> Path:
    settings = {**FAST, "batch_size": 8, "eval_every": 10, **overrides}
    result = train(
        TrainRequest(data=[str(prepared)], out=str(out), preset="tiny", overrides=settings)
    )
    return result.run_dir


def _losses(run_dir: Path, key: str = "train_loss") -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[key] for line in lines if key in json.loads(line)]


# --------------------------------------------------------------------------- training


def test_tiny_model_learns_well_below_uniform(prepared, tmp_path):
    run_dir = _run(prepared, tmp_path / "run", max_steps=120, lr=3e-3, eval_every=40)
    val = _losses(run_dir, "val_loss")
    vocab = json.loads((run_dir / "config.json").read_text())["vocab_size"]
    assert val[0] < math.log(vocab)
    assert val[-1] < 0.5 * math.log(vocab)
    assert val[-1] < val[0]
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {
        "step",
        "tokens",
        "train_loss",
        "val_loss",
        "val_bpb",
        "lr",
        "tokens_per_s",
        "elapsed_s",
    } <= set(record)
    assert record["step"] == 120


def test_run_folder_is_a_model_folder(prepared, tmp_path):
    run_dir = _run(prepared, tmp_path / "run", max_steps=12)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "meta.json",
        "train_state.pt",
        "metrics.jsonl",
        "loss.png",
        "train_config.json",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = checkpoint.load_model(run_dir)
    assert model.config.vocab_size == json.loads((prepared / "meta.json").read_text())["vocab_size"]


def test_resumed_run_logs_the_same_losses_as_an_uninterrupted_one(prepared, tmp_path):
    straight = _run(prepared, tmp_path / "a", max_steps=30)
    stopped = _run(prepared, tmp_path / "b", max_steps=30, stop_after=13)
    assert len(_losses(stopped)) == 13
    train(TrainRequest(resume=str(stopped), overrides={}))
    assert _losses(stopped) == _losses(straight)
    assert _losses(stopped, "val_loss") == _losses(straight, "val_loss")
    a = checkpoint.load_model(straight).state_dict()
    b = checkpoint.load_model(stopped).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _new(prepared: Path, out: Path, **overrides):
    """A run set up but not started (the loop's own `Run`), to drive one step at a time."""
    settings = {**FAST, "compile": "off", "max_steps": 1, **overrides}
    request = TrainRequest(data=[str(prepared)], out=str(out), preset="tiny", overrides=settings)
    with RunGuard() as guard:
        parts = new_run(request, quiet, guard)
    run = Run(parts, quiet)
    run.start()
    return run


class FixedBatches:
    """A sampler that hands out the same windows every step, `batch_size` rows at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size, self.at = x, y, batch_size, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(self.at, self.at + self.batch_size)
        self.at = (self.at + self.batch_size) % len(self.x)
        return self.x[rows], self.y[rows]

    def state_dict(self) -> dict[str, int]:
        return {"at": self.at}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.at = state["at"]


def _one_step(run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """Train one step on (x, y); returns its loss and the gradients the optimizer saw."""
    run.sampler = FixedBatches(x, y, run.cfg.batch_size)
    grads: dict[str, torch.Tensor] = {}
    optimizer_step = run.optimizer.step

    def step(*args, **kwargs):
        grads.update({n: p.grad.clone() for n, p in run.model.named_parameters()})
        return optimizer_step(*args, **kwargs)

    run.optimizer.step = step
    return run.train_step(1e-3), grads


def test_accumulated_micro_batches_equal_one_big_batch(prepared, tmp_path):
    """3 micro-batches of 4 give the gradients, loss and weights of one batch of 12."""
    # No clipping: it would rescale a wrong-sized gradient back to norm 1 and hide it.
    accumulated = _new(prepared, tmp_path / "a", batch_size=4, tokens_per_step=12 * 64, grad_clip=0)
    whole = _new(prepared, tmp_path / "b", batch_size=12, grad_clip=0)
    x, y = BatchSampler(whole.train_tokens, 12, 64, seed=5).next_batch()
    assert (accumulated.budget.accum_steps, whole.budget.accum_steps) == (3, 1)
    loss_a, grads_a = _one_step(accumulated, x, y)
    loss_b, grads_b = _one_step(whole, x, y)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name, grad in grads_b.items():
        torch.testing.assert_close(grads_a[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    weights_b = whole.model.state_dict()
    for name, weight in accumulated.model.state_dict().items():
        torch.testing.assert_close(weight, weights_b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # 8 s where bf16 matmuls are emulated (no AVX512-BF16/AMX)
def test_bf16_autocast_runs_the_matmuls_in_bf16_and_keeps_fp32_weights(prepared, tmp_path):
    run = _new(prepared, tmp_path / "run", max_steps=24, dtype="bfloat16", lr=3e-3, eval_every=12)
    seen: set[torch.dtype] = set()
    for module in run.model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _args, out: seen.add(out.dtype))
    try:
        run.loop()
    finally:
        run.metrics.close()
    assert seen == {torch.bfloat16}  # every projection, in training and evaluation
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}
    state = run.optimizer.state.values()
    # AdamW's moments and Muon's momentum alike
    assert {t.dtype for s in state for t in s.values()} == {torch.float32}
    val = _losses(run.run_dir, "val_loss")
    assert val[-1] < val[0]


# --------------------------------------------------------------------------- CLI


def test_cli_train_with_flags_and_config_file(prepared, tmp_path, capsys):
    cfg = tmp_path / "settings.toml"
    cfg.write_text("[model]\nn_layers = 3\n[train]\nbatch_size = 4\n")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(prepared),
            "--preset",
            "tiny",
            "--config",
            str(cfg),
            "--d-model",
            "48",
            "--max-steps",
            "8",
            "--eval-every",
            "4",
            "--sample-tokens",
            "4",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--seed",
            "3",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "parameters" in captured.err and "Traceback" not in captured.err
    assert captured.out.strip()  # the closing sample is the product: it goes to stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layers"], config["d_model"]) == (3, 48)
    train_config = json.loads((out / "train_config.json").read_text())
    assert (train_config["batch_size"], train_config["seed"]) == (4, 3)


def test_cli_refuses_existing_run_folder_and_changed_schedule_on_resume(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        str(prepared),
        "--preset",
        "tiny",
        "--max-steps",
        "4",
        "--out",
        str(out),
        "--dtype",
        "float32",
        "--sample-tokens",
        "0",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "Traceback" not in err
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "--lr" in capsys.readouterr().err


def test_cli_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "Traceback" not in err and "resume" in err


def test_cli_bad_setting_is_a_usage_error(prepared, tmp_path, capsys):
    code = main(
        [
            "train",
            str(prepared),
            "--preset",
            "tiny",
            "--d-model",
            "50",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "--d-model" in capsys.readouterr().err


def _start_training(prepared: Path, out: Path, *flags: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "slm",
        "train",
        str(prepared),
        "--preset",
        "tiny",
        "--max-steps",
        "100000",
        "--out",
        str(out),
        "--dtype",
        "float32",
        "--sample-tokens",
        "0",
        "--threads",
        "1",
        "--compile",
        "off",
        *flags,
    ]
    # A shell that starts jobs in the background makes them ignore SIGINT, and Python keeps
    # an inherited "ignore": give the child the default disposition, as a terminal would.
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout_s: float = 120) -> None:
    """Wait until `ready()`; fail, without sending anything, if it never comes."""
    deadline = time.time() + timeout_s
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"no {what} within {timeout_s:.0f} s:\n{err}")
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes(prepared, tmp_path):
    """SIGINT mid-run: exit 130, a consistent checkpoint, and --resume finishes the schedule."""
    out = tmp_path / "run"
    proc = _start_training(prepared, out)
    metrics = out / "metrics.jsonl"
    _wait_for(proc, lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, "step")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    state = checkpoint.load_train_state(out)
    assert state["step"] > 0
    assert len(_losses(out)) == state["step"]  # the checkpoint holds every logged step
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "slm",
            "train",
            "--resume",
            str(out),
            "--stop-after",
            str(state["step"] + 3),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    end = state["step"] + 3
    assert checkpoint.load_train_state(out)["step"] == end
    # The same schedule run straight through to the same step logs the same losses.
    settings = {
        "max_steps": 100000,
        "dtype": "float32",
        "sample_tokens": 0,
        "threads": 1,
        "compile": "off",
        "stop_after": end,
    }
    straight = train(
        TrainRequest(
            data=[str(prepared)], out=str(tmp_path / "straight"), preset="tiny", overrides=settings
        )
    ).run_dir
    assert _losses(out) == _losses(straight)


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once_and_keeps_the_last_checkpoint(prepared, tmp_path):
    """Two SIGINTs inside one step: no wait for the step, no save; the step before stays."""
    out = tmp_path / "run"
    # Steps of 200 micro-batches (~1 s), each saved, so both signals land inside step 2.
    proc = _start_training(
        prepared, out, "--tokens-per-step", str(200 * 8 * 64), "--save-every", "1"
    )
    files = (out / "train_state.pt", out / "model.safetensors")
    _wait_for(proc, lambda: all(f.exists() for f in files), "checkpoint")
    time.sleep(0.05)  # the second of the pair's two renames
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped at once" in err and "Traceback" not in err
    assert "checkpoint saved" not in err  # the half-done step was not saved
    state = checkpoint.load_train_state(out)
    assert state["step"] == 1 and len(_losses(out)) == 1
    model = checkpoint.load_model(out)
    check_resume_point(out, state)  # weights and state are of the same step
    assert model.config.vocab_size > 0


def test_a_failed_start_can_be_retried_with_the_same_out(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", str(prepared), "--preset", "tiny", "--out", str(out), "--sample-tokens", "0"]
    assert main([*base, "--context-len", "100000", "--max-steps", "2"]) == 2
    assert "fewer than one window of --context-len 100000" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written: no folder left behind
    assert main([*base, "--max-steps", "2", "--dtype", "float32"]) == 0


def test_out_that_is_a_file_is_a_usage_error(prepared, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["train", str(prepared), "--preset", "tiny", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_resume_refuses_data_that_changed(prepared, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    run_dir = _run(data, tmp_path / "run", max_steps=10, stop_after=4)
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SLMError, match="changed"):
        train(TrainRequest(resume=str(run_dir)))


def test_a_python_caller_sees_progress_through_its_own_object(prepared, tmp_path):
    """`slm.training` reports through `TrainProgress`; no terminal code is needed."""
    from slm.training.progress import TrainProgress

    class Recorder(TrainProgress):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple] = []

        def start(self, budget, step, elapsed_s):
            self.events.append(("start", step))

        def advance(self, budget, step, elapsed_s, loss, lr, tokens_per_s):
            self.events.append(("step", step, loss))

        def write(self, line):
            self.events.append(("line", line))

        def close(self):
            self.events.append(("close",))

    recorder = Recorder()
    settings = {**FAST, "batch_size": 4, "eval_every": 3, "max_steps": 6}
    request = TrainRequest(data=[str(prepared)], out=str(tmp_path / "run"), preset="tiny")
    request.overrides = settings
    train(request, progress=recorder)
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "close"
    assert [e[1] for e in recorder.events if e[0] == "step"] == [1, 2, 3, 4, 5, 6]
    evals = [e[1] for e in recorder.events if e[0] == "line"]
    assert len(evals) == 2 and all("bits/byte" in line for line in evals)


def test_out_of_memory_halves_the_micro_batch_and_trains_the_same_windows(prepared, tmp_path):
    """A batch that does not fit becomes accumulated halves: same step, same loss."""
    fits = _new(prepared, tmp_path / "a", batch_size=4, tokens_per_step=16 * 64, grad_clip=0)
    big = _new(prepared, tmp_path / "b", batch_size=16, grad_clip=0)
    real_loss = big.loss_fn

    def tight_memory(x, y):
        if x.shape[0] > 4:  # as a GPU would with a micro-batch over 4
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(x, y)

    big.loss_fn = tight_memory
    messages: list[str] = []
    big.log = messages.append
    assert big.train_step(1e-3) == pytest.approx(fits.train_step(1e-3), rel=1e-5)
    assert (big.sampler.batch_size, big.budget.accum_steps) == (4, 4)
    assert big.budget.tokens_per_step == fits.budget.tokens_per_step
    assert len(messages) == 2 and "out of memory at micro-batch 16" in messages[0]
    for name, weight in big.model.state_dict().items():
        torch.testing.assert_close(weight, fits.model.state_dict()[name], rtol=1e-4, atol=1e-6)


def test_out_of_memory_at_batch_one_is_one_clear_error(prepared, tmp_path):
    run = _new(prepared, tmp_path / "a", batch_size=1)

    def no_memory(x, y):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    run.loss_fn = no_memory
    with pytest.raises(SLMError, match="out of memory at micro-batch 1"):
        run.train_step(1e-3)
