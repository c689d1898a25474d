"""The training loop: settings -> data -> model -> optimizer steps -> checkpoints.

    slm train                                   # seed-2.5m on the built-in corpus, 5 minutes
    slm train data/mine --preset small --max-time 30m
    slm train my_texts/ --max-steps 2000 --eval-every 200 --out runs/mine
    slm train --resume runs/mine                # continue exactly where it stopped

What this module owns: resolving the run's settings, the step loop with gradient accumulation,
periodic evaluation and checkpoints, and what an interruption does (save, say how to resume).
The budget and learning rate schedule are `slm.training.schedule` (pure functions), the
optimizer and loss `slm.training.optimizer`, the run folder's choice, data record and resume
checks `slm.training.run_folder`, what the user sees `slm.training.progress`, catching Ctrl-C
`slm.training.stop`. The model is `slm.model`, the folder format `slm.checkpoint`, batches
`slm.data.prepared`, metrics files `slm.training.metrics`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

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
from slm.data.prepared import BatchSampler, ChatBatchSampler, PreparedData
from slm.device import choose_dtype, resolve_device, set_threads
from slm.errors import EXIT_USAGE, SLMError
from slm.evaluate import (
    EvalResult,
    conversation_windows,
    evaluate_windows,
    sample_windows,
    token_byte_lengths,
)
from slm.model import GPT, count_parameters
from slm.tokenizer.bpe import Tokenizer
from slm.training.finetune import (
    check_same_tokens,
    finetune_settings,
    grow_vocab,
    load_source,
    refuse_shape_changes,
)
from slm.training.memory import check_fits
from slm.training.metrics import PLOT_FILE, MetricsLog, plot_losses
from slm.training.optimizer import make_loss_fn, make_optimizer, want_compile
from slm.training.progress import Log, TrainProgress, quiet
from slm.training.run_folder import (
    RunGuard,
    check_resume_point,
    fill_run_dir,
    recorded_data,
    resolve_data,
    resumed_train_config,
)
from slm.training.schedule import lr_at, plan_budget
from slm.training.stop import StopRequest

DEFAULT_MAX_TIME = "5m"  # `slm train` with no budget: a few minutes, then a sample
STATE_FORMAT_VERSION = 1


@dataclass
class TrainRequest:
    """What the user asked for, before defaults are resolved (the CLI fills it)."""

    data: list[str] = field(default_factory=list)
    out: str | None = None
    resume: str | None = None
    config_file: str | None = None
    preset: str | None = None
    vocab_size: int | None = None
    init_from: str | None = None  # a model folder to start from (fine-tuning)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    val: EvalResult | None
    sample: str
    interrupted: bool
    stop_signal: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped the run


# --------------------------------------------------------------------------- settings


def resolve_settings(
    request: TrainRequest, vocab_size: int | None, base: ModelConfig | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """defaults < preset < --config file < flags; the model's vocab comes from the tokenizer.

    `vocab_size=None` keeps the preset's (before the data, and so the tokenizer, exists).
    With `base` (a fine-tune's source model) the shape is the source's and the train
    defaults are a fine-tune's (`slm.training.finetune`).
    """
    file_settings = load_config_file(request.config_file) if request.config_file else {}
    name = request.preset or file_settings.pop("preset", None) or DEFAULT_PRESET
    file_settings.pop("preset", None)
    file_model, file_train = split_settings(file_settings)
    flag_model, flag_train = split_settings(request.overrides)
    train_settings = {**file_train, **flag_train}
    if base is not None:
        refuse_shape_changes({**file_model, **flag_model}, base)
        model_settings = base.to_dict()
        train_settings = finetune_settings(train_settings, _has_budget(train_settings))
        train_settings["init_from"] = request.init_from
    else:
        model_settings = preset(name)
        model_settings.update(file_model)
        model_settings.update(flag_model)
    if vocab_size is not None:
        # A fine-tune keeps a source vocabulary larger than its tokenizer's (unused rows).
        floor = model_settings["vocab_size"] if base is not None else 0
        model_settings["vocab_size"] = max(vocab_size, floor)
    model_cfg = ModelConfig.from_dict(model_settings, source="settings")
    train_cfg = TrainConfig.from_dict(train_settings, source="settings")
    if not train_cfg.has_budget:
        train_cfg = replace(train_cfg, max_time=DEFAULT_MAX_TIME)
    return model_cfg, train_cfg


# --------------------------------------------------------------------------- the run


def train(
    request: TrainRequest, log: Log = quiet, progress: TrainProgress | None = None
) -> TrainResult:
    """Run (or resume) training and return where it ended. Ctrl-C saves, then returns.

    `log` receives one-off messages (settings, where the run folder is); `progress` the
    loop's events (steps, evaluations), by default passed to `log` as plain lines.
    """
    with RunGuard() as guard:
        run = _resume_run(request, log, guard) if request.resume else _new_run(request, log, guard)
        run.progress = progress or TrainProgress(log)
        try:
            return run.loop()
        finally:
            run.metrics.close()


def _has_budget(train_settings: dict[str, Any]) -> bool:
    return any(train_settings.get(k) for k in ("max_steps", "max_tokens", "max_time", "epochs"))


def _new_run(request: TrainRequest, log: Log, guard: RunGuard) -> Run:
    if request.init_from:
        return _finetune_run(request, log, guard)
    # 1. Check settings and the device before any slow work or any file is written. Data
    #    prepared here gets the preset's vocabulary unless --vocab-size says otherwise.
    draft_model, draft_train = resolve_settings(request, vocab_size=None)
    resolve_device(draft_train.device)
    run_dir = guard.new(request.out, request.preset)
    data = resolve_data(request.data, run_dir, request.vocab_size or draft_model.vocab_size, log)
    model_cfg, train_cfg = resolve_settings(request, vocab_size=data.vocab_size)
    check_fits(
        model_cfg, train_cfg, len(data.tokens("train")), resolve_device(train_cfg.device).type
    )
    # 2. The run folder is a model folder: tokenizer and data statistics travel with it.
    fill_run_dir(run_dir, data, model_cfg, train_cfg)
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg)
    return Run(run_dir, data, model, train_cfg, log, state=None)


def _finetune_run(request: TrainRequest, log: Log, guard: RunGuard) -> Run:
    # 1. The source model first: its shape and tokenizer decide everything else.
    if request.preset or request.vocab_size:
        raise SLMError(
            "--init-from takes the model's preset and tokenizer; drop --preset/--vocab-size",
            exit_code=EXIT_USAGE,
        )
    assert request.init_from is not None
    model, source_tokenizer, source = load_source(request.init_from)
    _, draft_train = resolve_settings(request, vocab_size=None, base=model.config)
    resolve_device(draft_train.device)
    run_dir = guard.new(request.out, "finetune")
    # 2. The new text in the source's tokens (a chat folder may add the two chat tokens).
    tokenizer_file = Path(source["folder"]) / checkpoint.TOKENIZER_FILE
    data = resolve_data(request.data, run_dir, model.config.vocab_size, log, str(tokenizer_file))
    check_same_tokens(source_tokenizer, Tokenizer.from_file(data.tokenizer_path), data.folder)
    if data.vocab_size > model.config.vocab_size:
        log(
            f"growing the vocabulary from {model.config.vocab_size} to {data.vocab_size} "
            "(the chat tokens; new rows start as the mean embedding)"
        )
        model = grow_vocab(model, data.vocab_size)
    model_cfg, train_cfg = resolve_settings(request, data.vocab_size, base=model.config)
    check_fits(
        model_cfg, train_cfg, len(data.tokens("train")), resolve_device(train_cfg.device).type
    )
    fill_run_dir(run_dir, data, model_cfg, train_cfg, init_from=source)
    log(
        f"fine-tuning {source['folder']}"
        + (f" (val {source['val_bpb']:.4f} bits/byte)" if source["val_bpb"] else "")
    )
    torch.manual_seed(train_cfg.seed)
    return Run(run_dir, data, model, train_cfg, log, state=None)


def _resume_run(request: TrainRequest, log: Log, guard: RunGuard) -> Run:
    run_dir = guard.existing(Path(request.resume))
    state = checkpoint.load_train_state(run_dir)
    model = checkpoint.load_model(run_dir)
    check_resume_point(run_dir, state)
    new_inputs = bool(request.data or request.preset or request.config_file)
    train_cfg = resumed_train_config(run_dir, request.overrides, model.config.to_dict(), new_inputs)
    data = recorded_data(run_dir)
    budget = plan_budget(train_cfg, model.config, len(data.tokens("train")))
    if budget.done(state["step"], state["elapsed_s"]):
        raise SLMError(
            f"{run_dir} already finished its budget (step {state['step']}); nothing to resume",
            hint=f"to train it further, start from it: slm train DATA --init-from {run_dir}",
            exit_code=EXIT_USAGE,
        )
    log(f"resuming {run_dir} at step {state['step']}")
    return Run(run_dir, data, model, train_cfg, log, state=state)


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
        self.sampler = self._sampler(data, cfg)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.loss_fn = make_loss_fn(
            self.model,
            self.device,
            self.dtype,
            want_compile(cfg.compile, self.device, self.budget),
            log,
        )
        self.tokenizer = Tokenizer.from_file(run_dir / checkpoint.TOKENIZER_FILE)
        self.byte_lengths = token_byte_lengths(self.tokenizer)
        n_windows = max(1, cfg.eval_tokens // self.model_cfg.context_len)
        if data.is_chat:  # each val conversation in a window of its own, the assistant scored
            self.eval_windows = conversation_windows(
                data.conversations("val"), self.model_cfg.context_len, 4 * n_windows
            )
            self.score_mask: Any = data.mask("val")
        else:
            self.eval_windows = sample_windows(
                len(self.val_tokens), self.model_cfg.context_len, n_windows
            )
            self.score_mask = None
        self.metrics = MetricsLog(
            run_dir, cfg.wandb, cfg.tensorboard, {**cfg.to_dict(), **self.model_cfg.to_dict()}
        )
        self.progress = TrainProgress(log)
        self.step, self.tokens, self.elapsed_s = 0, 0, 0.0
        self.startup_s = 0.0  # time to the end of the first step (compilation): not training
        self.last_val: EvalResult | None = None
        if state is not None:
            self._load_state(state)
            self.metrics.truncate_after(self.step)

    def _sampler(self, data: PreparedData, cfg: TrainConfig) -> Any:
        context_len = self.model_cfg.context_len
        if not data.is_chat:
            return BatchSampler(self.train_tokens, cfg.batch_size, context_len, cfg.seed)
        sampler = ChatBatchSampler(
            self.train_tokens,
            data.mask("train"),
            data.conversations("train"),
            cfg.batch_size,
            context_len,
            cfg.seed,
        )
        if sampler.skipped:
            self.log(f"warning: {sampler.skipped} conversations longer than the context skipped")
        return sampler

    # ------------------------------------------------------------------ loop

    def loop(self) -> TrainResult:
        """Train to the end of the budget, or until Ctrl-C / SIGTERM / --stop-after."""
        self._announce()
        self.progress.start(self.budget, self.step, self.elapsed_s)
        try:
            with StopRequest(self.log) as stop:
                ended = self._steps(stop)
                stop_signal = stop.signal_name
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
            self.progress.close()
        plot_losses(self.metrics.records, self.run_dir / PLOT_FILE)
        interrupted = ended == "interrupted"
        wants_sample = self.cfg.sample_tokens > 0 and not interrupted
        sample = self.sample_text(self.cfg.sample_tokens * 4) if wants_sample else ""
        self.log(f"run folder: {self.run_dir}  (weights, tokenizer, metrics.jsonl, {PLOT_FILE})")
        return TrainResult(
            self.run_dir, self.step, self.tokens, self.last_val, sample, interrupted, stop_signal
        )

    def _steps(self, stop: StopRequest) -> Literal["done", "interrupted", "stopped"]:
        """The step loop: train, log, evaluate and save on schedule."""
        save_kind, save_every = (
            parse_every(self.cfg.save_every) if self.cfg.save_every else ("eval", 0)
        )
        last_save_s = self.elapsed_s
        start = time.perf_counter() - self.elapsed_s
        while not self.budget.done(self.step, self.elapsed_s):
            t0 = time.perf_counter()
            progress = self.budget.progress(self.step, self.elapsed_s, self.startup_s)
            lr = lr_at(self.step, progress, self.cfg, self.budget.warmup_steps)
            loss = self.train_step(lr)
            self.step += 1
            self.tokens += self.budget.tokens_per_step
            self.elapsed_s = time.perf_counter() - start
            if self.step == 1:
                self.startup_s = self.elapsed_s
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
                record.update(self.evaluate())
            self.metrics.append(record)
            if "val_loss" in record:
                plot_losses(self.metrics.records, self.run_dir / PLOT_FILE)
            self.progress.advance(self.budget, self.step, self.elapsed_s, loss, lr, tokens_per_s)
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

    def evaluate(self) -> dict[str, float]:
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
            score_mask=self.score_mask,
        )
        self.last_val = result
        line = f"step {self.step}: val loss {result.loss:.4f}, {result.bpb:.4f} bits/byte"
        sample = self.sample_text(self.cfg.sample_tokens) if self.cfg.sample_tokens else ""
        if sample:
            line += "\n  sample: " + " ".join(sample.split())[:200]
        self.progress.write(line)
        return {"val_loss": result.loss, "val_bpb": result.bpb}

    def sample_text(self, max_new_tokens: int) -> str:
        """A short continuation of <|endoftext|>, to watch the model learn."""
        from slm.generation.generation import generate_text

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
            "startup_s": self.startup_s,
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format_version", 0) > STATE_FORMAT_VERSION:
            raise SLMError(f"{self.run_dir}: train state is from a newer slm", hint="upgrade slm")
        self.step, self.tokens, self.elapsed_s = state["step"], state["tokens"], state["elapsed_s"]
        self.startup_s = state.get("startup_s", 0.0)
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
