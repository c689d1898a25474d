"""The training loop: settings -> data -> model -> optimizer steps -> checkpoints.

    slm train                                   # seed-2.5m on the built-in corpus, 5 minutes
    slm train data/mine --preset small --max-time 30m
    slm train my_texts/ --max-steps 2000 --eval-every 200 --out runs/mine
    slm train --resume runs/mine                # continue exactly where it stopped

What this module owns: resolving the run's settings and data, the optimizer and the learning
rate schedule (`lr_at`, a pure function), the step loop with gradient accumulation, periodic
evaluation and checkpoints, and resume. The model is `slm.model`, the folder format
`slm.checkpoint`, batches `slm.data`, metrics files `slm.metrics`.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from slm import checkpoint
from slm.config import (
    DEFAULT_PRESET,
    ModelConfig,
    TrainConfig,
    load_config_file,
    parse_every,
    preset,
    split_settings,
)
from slm.data import BatchSampler, PreparedData, is_prepared, load_prepared
from slm.errors import EXIT_USAGE, SLMError
from slm.evaluate import EvalResult, evaluate_windows, sample_windows, token_byte_lengths
from slm.fileio import read_json, write_json
from slm.metrics import PLOT_FILE, MetricsLog, plot_losses
from slm.model import GPT, count_parameters
from slm.prepare import prepare
from slm.runtime import choose_dtype, resolve_device, set_threads
from slm.tokenizer import Tokenizer

DEFAULT_MAX_TIME = "5m"  # `slm train` with no budget: a few minutes, then a sample
WARMUP_FRACTION = 0.1  # warmup never takes more than this share of the budget
RUN_FILE = "run.json"
STATE_FORMAT_VERSION = 1
# Flags that may change when resuming: they do not alter the maths of the run.
RESUMABLE_OVERRIDES = {
    "device",
    "threads",
    "eval_every",
    "save_every",
    "stop_after",
    "compile",
    "sample_tokens",
    "wandb",
    "tensorboard",
}

Log = Callable[[str], None]


@dataclass
class TrainRequest:
    """What the user asked for, before defaults are resolved (the CLI fills it)."""

    data: list[str] = field(default_factory=list)
    out: str | None = None
    resume: str | None = None
    config_file: str | None = None
    preset: str | None = None
    vocab_size: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    val: EvalResult | None
    sample: str
    interrupted: bool


# --------------------------------------------------------------------------- schedule


def lr_at(step: int, progress: float, cfg: TrainConfig, warmup_steps: int) -> float:
    """Learning rate: linear warmup, then cosine from lr down to lr * min_lr_ratio.

    `progress` in [0, 1] is how much of the budget is spent (steps, tokens or time), so the
    cosine ends where the budget does whatever kind of budget it is. Warmup ends after
    `warmup_steps` or a tenth of the budget, whichever comes first: a 1-minute run on a slow
    machine may only take 100 steps in all.
    """
    floor = cfg.lr * cfg.min_lr_ratio
    progress = min(max(progress, 0.0), 1.0)
    cosine = floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))
    if not warmup_steps:
        return cosine
    warmup = min(1.0, max((step + 1) / warmup_steps, progress / WARMUP_FRACTION))
    return cosine * warmup


@dataclass(frozen=True)
class Budget:
    """When training stops: the first of steps, wall-clock time (seconds) reached."""

    total_steps: int  # 0 when only a time budget is set
    max_time_s: float
    accum_steps: int  # micro-batches per optimizer step
    tokens_per_step: int
    warmup_steps: int

    def progress(self, step: int, elapsed_s: float) -> float:
        by_steps = step / self.total_steps if self.total_steps else 0.0
        by_time = elapsed_s / self.max_time_s if self.max_time_s else 0.0
        return max(by_steps, by_time)

    def done(self, step: int, elapsed_s: float) -> bool:
        return self.progress(step, elapsed_s) >= 1.0


def plan_budget(cfg: TrainConfig, model: ModelConfig, train_tokens: int) -> Budget:
    """Turn --max-steps / --max-tokens / --epochs / --max-time into steps and seconds."""
    batch_tokens = cfg.batch_size * model.context_len
    accum = max(1, math.ceil(cfg.tokens_per_step / batch_tokens)) if cfg.tokens_per_step else 1
    tokens_per_step = accum * batch_tokens
    candidates = []
    if cfg.max_steps:
        candidates.append(cfg.max_steps)
    if cfg.max_tokens:
        candidates.append(math.ceil(cfg.max_tokens / tokens_per_step))
    if cfg.epochs:
        candidates.append(math.ceil(cfg.epochs * train_tokens / tokens_per_step))
    total = min(candidates) if candidates else 0
    return Budget(total, cfg.max_time_s, accum, tokens_per_step, cfg.warmup_steps)


# --------------------------------------------------------------------------- settings


def resolve_settings(
    request: TrainRequest, vocab_size: int | None
) -> tuple[ModelConfig, TrainConfig]:
    """defaults < preset < --config file < flags; the model's vocab comes from the tokenizer.

    `vocab_size=None` keeps the preset's (before the data, and so the tokenizer, exists).
    """
    file_settings = load_config_file(request.config_file) if request.config_file else {}
    name = request.preset or file_settings.pop("preset", None) or DEFAULT_PRESET
    file_settings.pop("preset", None)
    model_settings = preset(name)
    file_model, file_train = split_settings(file_settings)
    flag_model, flag_train = split_settings(request.overrides)
    model_settings.update(file_model)
    model_settings.update(flag_model)
    if vocab_size is not None:
        model_settings["vocab_size"] = vocab_size
    train_settings = {**file_train, **flag_train}
    model_cfg = ModelConfig.from_dict(model_settings, source="settings")
    train_cfg = TrainConfig.from_dict(train_settings, source="settings")
    if not train_cfg.has_budget:
        train_cfg = replace(train_cfg, max_time=DEFAULT_MAX_TIME)
    return model_cfg, train_cfg


def new_run_dir(out: str | None, preset_name: str | None) -> Path:
    """The folder for a new run: `--out`, or a new timestamped folder under runs/.

    A folder left by a start that never reached its first checkpoint (a run record but no
    train state) is cleared and reused, so retrying the same command works.
    """
    if out:
        run_dir = Path(out)
        if run_dir.exists() and not run_dir.is_dir():
            raise SLMError(f"--out {run_dir} is a file, not a folder", exit_code=EXIT_USAGE)
        if _failed_start(run_dir):
            shutil.rmtree(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SLMError(
                f"run folder {run_dir} already exists and is not empty",
                hint=f"continue it with `slm train --resume {run_dir}` or choose another --out",
                exit_code=EXIT_USAGE,
            )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{preset_name or DEFAULT_PRESET}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _failed_start(run_dir: Path) -> bool:
    return (run_dir / RUN_FILE).is_file() and not (run_dir / checkpoint.TRAIN_STATE_FILE).exists()


def resolve_data(sources: list[str], run_dir: Path, vocab_size: int, log: Log) -> PreparedData:
    """A prepared folder is used as is; anything else is prepared into the run folder."""
    if len(sources) == 1 and is_prepared(sources[0]):
        return load_prepared(sources[0])
    what = ", ".join(sources) if sources else "the built-in Shakespeare corpus"
    log(f"preparing {what} into {run_dir / 'data'}")
    summary = prepare(sources, run_dir / "data", vocab_size=vocab_size, log=log)
    log(summary.format())
    return load_prepared(run_dir / "data")


# --------------------------------------------------------------------------- the run


def train(request: TrainRequest, log: Log = lambda _msg: None) -> TrainResult:
    """Run (or resume) training and return where it ended. Ctrl-C saves, then returns."""
    run = _resume_run(request, log) if request.resume else _new_run(request, log)
    try:
        return run.loop()
    finally:
        run.metrics.close()


def _new_run(request: TrainRequest, log: Log) -> Run:
    # 1. Check settings and the device before any slow work or any file is written. Data
    #    prepared here gets the preset's vocabulary unless --vocab-size says otherwise.
    draft_model, draft_train = resolve_settings(request, vocab_size=None)
    resolve_device(draft_train.device)
    run_dir = new_run_dir(request.out, request.preset)
    data = resolve_data(request.data, run_dir, request.vocab_size or draft_model.vocab_size, log)
    model_cfg, train_cfg = resolve_settings(request, vocab_size=data.vocab_size)
    # 2. The run folder is a model folder: tokenizer and data statistics travel with it.
    if data.tokenizer_path.resolve() != (run_dir / checkpoint.TOKENIZER_FILE).resolve():
        shutil.copyfile(data.tokenizer_path, run_dir / checkpoint.TOKENIZER_FILE)
        shutil.copyfile(data.folder / checkpoint.META_FILE, run_dir / checkpoint.META_FILE)
    checkpoint.save_config(run_dir, model_cfg)
    write_json(run_dir / checkpoint.TRAIN_CONFIG_FILE, train_cfg.to_dict())
    write_json(run_dir / RUN_FILE, _run_record(data))
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg)
    return Run(run_dir, data, model, train_cfg, log, state=None)


def _resume_run(request: TrainRequest, log: Log) -> Run:
    run_dir = Path(request.resume)
    state = checkpoint.load_train_state(run_dir)
    model = checkpoint.load_model(run_dir)
    if state.get("step") != _weights_step(run_dir):
        raise SLMError(
            f"{run_dir}: weights and train state are from different steps",
            hint="the last checkpoint was cut short; resume is not possible",
        )
    saved = read_json(run_dir / checkpoint.TRAIN_CONFIG_FILE, "train config")
    saved_model = model.config.to_dict()
    changed = {
        k: v
        for k, v in request.overrides.items()
        if (k in saved and saved[k] != v) or (k in saved_model and saved_model[k] != v)
    }
    refused = sorted(set(changed) - RESUMABLE_OVERRIDES)
    if refused or request.data or request.preset or request.config_file:
        raise SLMError(
            "a resumed run keeps its data, model and schedule",
            hint="drop " + (", ".join(_flags(refused)) or "DATA/--preset/--config"),
            exit_code=EXIT_USAGE,
        )
    # --stop-after belongs to one invocation: a resumed run finishes its schedule.
    train_cfg = TrainConfig.from_dict({**saved, "stop_after": 0, **changed})
    run_info = read_json(run_dir / RUN_FILE, "run record")
    data = load_prepared(run_info["data"])
    _check_same_data(run_info, data)
    log(f"resuming {run_dir} at step {state['step']}")
    return Run(run_dir, data, model, train_cfg, log, state=state)


def _run_record(data: PreparedData) -> dict[str, Any]:
    """Which data the run trains on, precisely enough to notice if it changes under a resume."""
    return {
        "format_version": 1,
        "data": str(data.folder.resolve()),
        "tokenizer_sha256": data.meta.get("tokenizer_sha256"),
        "train_tokens": data.meta["splits"]["train"]["tokens"],
    }


def _check_same_data(run_info: dict[str, Any], data: PreparedData) -> None:
    now = _run_record(data)
    for key in ("tokenizer_sha256", "train_tokens"):
        if key in run_info and run_info[key] != now[key]:
            raise SLMError(
                f"cannot resume: the data in {data.folder} changed since the run started ({key})",
                hint="resume needs the data the run began with; start a new run instead",
            )


def _flags(names: list[str]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in names]


def _weights_step(run_dir: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(run_dir / checkpoint.WEIGHTS_FILE), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None


class Run:
    """One training run's moving parts; `loop()` runs it to the end of its budget."""

    def __init__(
        self,
        run_dir: Path,
        data: PreparedData,
        model: GPT,
        cfg: TrainConfig,
        log: Log,
        state: dict[str, Any] | None,
    ):
        self.run_dir, self.data, self.cfg, self.log = run_dir, data, cfg, log
        set_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        # A resumed run keeps the precision it chose at the start ("auto" is a timing probe,
        # which a busy machine could answer differently).
        resumed_dtype = state.get("dtype") if state and cfg.dtype == "auto" else None
        self.dtype = (
            getattr(torch, resumed_dtype) if resumed_dtype else choose_dtype(cfg.dtype, self.device)
        )
        self.model = model.to(self.device).train()
        self.model_cfg = model.config
        self.train_tokens = data.tokens("train")
        self.val_tokens = data.tokens("val")
        self.budget = plan_budget(cfg, self.model_cfg, len(self.train_tokens))
        self.sampler = BatchSampler(
            self.train_tokens, cfg.batch_size, self.model_cfg.context_len, cfg.seed
        )
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.loss_fn = make_loss_fn(
            self.model,
            self.device,
            self.dtype,
            _want_compile(cfg.compile, self.device, self.budget),
            log,
        )
        self.tokenizer = Tokenizer.from_file(run_dir / checkpoint.TOKENIZER_FILE)
        self.byte_lengths = token_byte_lengths(self.tokenizer)
        self.eval_windows = sample_windows(
            len(self.val_tokens),
            self.model_cfg.context_len,
            max(1, cfg.eval_tokens // self.model_cfg.context_len),
        )
        self.metrics = MetricsLog(
            run_dir, cfg.wandb, cfg.tensorboard, {**cfg.to_dict(), **self.model_cfg.to_dict()}
        )
        self.step, self.tokens, self.elapsed_s = 0, 0, 0.0
        self.last_val: EvalResult | None = None
        if state is not None:
            self._load_state(state)
            self.metrics.truncate_after(self.step)

    # ------------------------------------------------------------------ loop

    def loop(self) -> TrainResult:
        """Train to the end of the budget, or until Ctrl-C / --stop-after; then sample."""
        self._announce()
        bar = _progress_bar(self.budget, self.step, self.elapsed_s)
        try:
            with StopRequest(self.log) as stop:
                ended = self._steps(bar, stop)
                if ended != "done":
                    self.save()
                    self.log(
                        f"stopped at step {self.step}; checkpoint saved. "
                        f"Continue with: slm train --resume {self.run_dir}"
                    )
        except KeyboardInterrupt:
            # A second Ctrl-C: the step in flight is half done, so it is not saved.
            self.log(f"stopped at once; the last checkpoint in {self.run_dir} is kept")
            raise
        finally:
            if bar is not None:
                bar.close()
        plot_losses(self.metrics.records, self.run_dir / PLOT_FILE)
        interrupted = ended == "interrupted"
        wants_sample = self.cfg.sample_tokens > 0 and not interrupted
        sample = self.sample_text(self.cfg.sample_tokens * 4) if wants_sample else ""
        self.log(f"run folder: {self.run_dir}  (weights, tokenizer, metrics.jsonl, {PLOT_FILE})")
        return TrainResult(self.run_dir, self.step, self.tokens, self.last_val, sample, interrupted)

    def _steps(self, bar: Any, stop: StopRequest) -> Literal["done", "interrupted", "stopped"]:
        """The step loop: train, log, evaluate and save on schedule."""
        save_kind, save_every = (
            parse_every(self.cfg.save_every) if self.cfg.save_every else ("eval", 0)
        )
        last_save_s = self.elapsed_s
        start = time.perf_counter() - self.elapsed_s
        while not self.budget.done(self.step, self.elapsed_s):
            t0 = time.perf_counter()
            progress = self.budget.progress(self.step, self.elapsed_s)
            lr = lr_at(self.step, progress, self.cfg, self.budget.warmup_steps)
            loss = self.train_step(lr)
            self.step += 1
            self.tokens += self.budget.tokens_per_step
            self.elapsed_s = time.perf_counter() - start
            tokens_per_s = self.budget.tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            record = {
                "step": self.step,
                "tokens": self.tokens,
                "train_loss": loss,
                "lr": lr,
                "tokens_per_s": round(tokens_per_s, 1),
                "elapsed_s": round(self.elapsed_s, 3),
            }
            final = self.budget.done(self.step, self.elapsed_s)
            if self.step % self.cfg.eval_every == 0 or final:
                record.update(self.evaluate(bar))
            self.metrics.append(record)
            if "val_loss" in record:
                plot_losses(self.metrics.records, self.run_dir / PLOT_FILE)
            _advance_bar(bar, self.budget, self.step, self.elapsed_s, loss, lr, tokens_per_s)
            due = (
                (save_kind == "eval" and "val_loss" in record)
                or (save_kind == "steps" and self.step % int(save_every) == 0)
                or (save_kind == "seconds" and self.elapsed_s - last_save_s >= save_every)
            )
            if due or final:
                self.save()
                last_save_s = self.elapsed_s
            if final:
                break
            if stop.requested:
                return "interrupted"
            if self.cfg.stop_after and self.step >= self.cfg.stop_after:
                return "stopped"
        return "done"

    def train_step(self, lr: float) -> float:
        """One optimizer step over `accum_steps` micro-batches; returns the mean loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(self.budget.accum_steps):
            x, y = self._batch()
            loss = self.loss_fn(x, y)
            (loss / self.budget.accum_steps).backward()
            total += loss.item()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / self.budget.accum_steps

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.sampler.next_batch()
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the GPU's work.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x.to(self.device), y.to(self.device)

    # ------------------------------------------------------------------ eval, save

    def evaluate(self, bar: Any) -> dict[str, float]:
        if len(self.val_tokens) < 2:
            return {}
        result = evaluate_windows(
            self.model,
            self.val_tokens,
            self.eval_windows,
            self.byte_lengths,
            self.cfg.batch_size,
            self.device,
            self.dtype,
        )
        self.last_val = result
        line = f"step {self.step}: val loss {result.loss:.4f}, {result.bpb:.4f} bits/byte"
        sample = self.sample_text(self.cfg.sample_tokens) if self.cfg.sample_tokens else ""
        if sample:
            line += "\n  sample: " + " ".join(sample.split())[:200]
        _write_above_bar(bar, line, self.log)
        return {"val_loss": result.loss, "val_bpb": result.bpb}

    def sample_text(self, max_new_tokens: int) -> str:
        """A short continuation of <|endoftext|>, to watch the model learn."""
        from slm.generate import generate_text

        return generate_text(
            self.model,
            self.tokenizer,
            "",
            max_new_tokens=max_new_tokens,
            temperature=0.8,
            top_k=50,
            seed=self.cfg.seed,
            device=self.device,
        )

    def save(self) -> None:
        """Weights and train state, written side by side and renamed into place together."""
        checkpoint.save_checkpoint(self.run_dir, self.model, self._state(), self.step)

    def _state(self) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT_VERSION,
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed_s,
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format_version", 0) > STATE_FORMAT_VERSION:
            raise SLMError(f"{self.run_dir}: train state is from a newer slm", hint="upgrade slm")
        self.step, self.tokens, self.elapsed_s = state["step"], state["tokens"], state["elapsed_s"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])

    def _announce(self) -> None:
        n_params = count_parameters(self.model)
        b = self.budget
        budget = []
        if b.total_steps:
            budget.append(f"{b.total_steps} steps")
        if b.max_time_s:
            budget.append(f"{b.max_time_s:g} s")
        self.log(
            f"model: {n_params:,} parameters ({self.model_cfg.n_layers} layers, d_model "
            f"{self.model_cfg.d_model}, {self.model_cfg.n_heads} heads, context "
            f"{self.model_cfg.context_len}, vocab {self.model_cfg.vocab_size})\n"
            f"data: {len(self.train_tokens):,} train / {len(self.val_tokens):,} val tokens; "
            f"{b.tokens_per_step:,} tokens per step "
            f"({b.accum_steps} x batch {self.cfg.batch_size})\n"
            f"device: {self.device.type}, {str(self.dtype).replace('torch.', '')}, "
            f"{torch.get_num_threads()} threads; budget: {' or '.join(budget)}"
        )


class StopRequest:
    """Ctrl-C asks training to stop at the end of the current step, so that the checkpoint
    holds a whole step (exact resume); a second Ctrl-C stops at once.

    Installed only in the main thread and only where SIGINT is not ignored (a background
    job started by a shell ignores it on purpose).
    """

    def __init__(self, log: Log):
        self.log = log
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current not in (signal.SIG_IGN, None):
                self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\nstopping after this step to save a checkpoint (Ctrl-C again to quit now)")

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: decaying norm gains would fight the norm."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")  # one kernel for all tensors instead of a loop
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def _want_compile(setting: str, device: torch.device, budget: Budget) -> bool:
    """torch.compile: always on CUDA; on CPU only for runs long enough to repay it.

    Measured on seed-2.5m (2-core AMD EPYC, batch 16, context 256): compiling the forward
    pass with the loss costs 15-30 s once and then runs 1.25x (fp32) to 1.6x (bf16) faster,
    mostly by fusing the softmax of the loss and the elementwise chains. A run under about
    two minutes would not win that time back.
    """
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return True
    long_run = budget.max_time_s >= 120 or budget.total_steps >= 1000
    return device.type == "cpu" and long_run


def make_loss_fn(
    model: GPT, device: torch.device, dtype: torch.dtype, compile_it: bool, log: Log
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x, y) -> mean cross-entropy, under autocast when training in bf16.

    The loss is part of the compiled function so that log-softmax over the vocabulary fuses
    with the output head instead of writing the (B, T, vocab) probabilities out twice.
    """

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        autocast = (
            nullcontext()
            if dtype == torch.float32
            else torch.autocast(device_type=device.type, dtype=dtype)
        )
        with autocast:
            logits = model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    if not compile_it:
        return loss_fn
    compiled = torch.compile(loss_fn)
    state = {"fn": compiled}

    def guarded(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Compilation happens at the first call; a missing C++ toolchain must not end the run.
        try:
            return state["fn"](x, y)
        except Exception as exc:
            if state["fn"] is loss_fn:
                raise
            log(f"warning: torch.compile failed ({type(exc).__name__}: {exc}); running eagerly")
            state["fn"] = loss_fn
            return loss_fn(x, y)

    return guarded


# --------------------------------------------------------------------------- progress bar


def _progress_bar(budget: Budget, step: int, elapsed_s: float) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    if budget.total_steps:
        return tqdm(total=budget.total_steps, initial=step, unit="step", dynamic_ncols=True)
    return tqdm(
        total=round(budget.max_time_s),
        initial=round(elapsed_s),
        unit="s",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]",
        dynamic_ncols=True,
    )


def _advance_bar(
    bar: Any,
    budget: Budget,
    step: int,
    elapsed_s: float,
    loss: float,
    lr: float,
    tokens_per_s: float,
) -> None:
    if bar is None:
        return
    if budget.total_steps:
        bar.update(step - bar.n)
    else:
        bar.update(min(elapsed_s, budget.max_time_s) - bar.n)
    bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s", refresh=False)


def _write_above_bar(bar: Any, line: str, log: Log) -> None:
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        log(line)
