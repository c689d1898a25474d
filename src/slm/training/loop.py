"""The training loop: a run's parts -> optimizer steps -> evaluations and checkpoints.

    slm train data/mine --max-steps 2000 --eval-every 200 --out runs/mine
    torchrun --nproc-per-node 2 -m slm train data/mine --max-steps 2000   # several processes

What this module owns: `train(request)`, the step loop with gradient accumulation (and DDP
across torchrun ranks), periodic evaluation and checkpoints, and what an interruption does
(save, say how to resume). How a run starts (settings, data, model) is
`slm.training.setup`'s; the budget and learning rate `slm.training.schedule`'s; the optimizer
and loss `slm.training.optimizer`'s; the run folder `slm.training.run_folder`'s; ranks
`slm.training.distributed`'s; what the user sees `slm.training.progress`'s; catching Ctrl-C
and SIGTERM `slm.training.stop`'s. The model is `slm.model`, the folder format
`slm.checkpoint`, batches `slm.data.prepared`, metrics files `slm.training.metrics`.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from slm import checkpoint
from slm.config import TrainConfig, parse_every
from slm.data.prepared import BatchSampler, ChatBatchSampler, PreparedData
from slm.device import choose_dtype, resolve_device, set_threads
from slm.errors import SLMError
from slm.evaluate import (
    EvalResult,
    conversation_windows,
    evaluate_windows,
    sample_windows,
    token_byte_lengths,
)
from slm.model import count_parameters
from slm.tokenizer.bpe import Tokenizer
from slm.training import distributed
from slm.training.distributed import Dist
from slm.training.metrics import PLOT_FILE, MetricsLog, plot_losses
from slm.training.optimizer import make_loss_fn, make_optimizer, want_compile
from slm.training.progress import Log, TrainProgress, quiet
from slm.training.run_folder import RunGuard
from slm.training.schedule import lr_at, muon_momentum_at, plan_budget
from slm.training.setup import RunParts, TrainRequest, follower_run, new_run, resume_run
from slm.training.stop import StopRequest

__all__ = ["TrainRequest", "TrainResult", "train"]

STATE_FORMAT_VERSION = 1


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    val: EvalResult | None
    sample: str
    interrupted: bool
    stop_signal: str = ""  # "SIGINT" or "SIGTERM" when a signal stopped the run


# After `slm train` returns, the process still has to exit (torch's compile workers shut
# down): about 1.1 s on a 2-core CPU, measured around a 40 s run; a time budget keeps this back.
EXIT_S = 1.5
# The end is kept back with a quarter to spare: the last step can run slower than the one
# before, and the final sample, four times as long, costs more a token than the short one
# it is estimated from (a 10-minute run ended 0.9 s late without it).
END_MARGIN = 1.25


@dataclass
class EndCost:
    """What the end of a run takes, measured as the run goes, for a time budget to keep back.

    The end is the final evaluation (with its sample), the save and plot, then a sample four
    times as long. A periodic evaluation does all that but the longer sample, so its time
    stands for the end's; before the first one, an evaluation is taken to cost a third of
    training on as many tokens: a forward pass, without the backward that costs twice it.
    """

    step_s: float = 0.0  # the last step (the first, mostly compilation, is left out)
    evaluation_s: float | None = None  # the last evaluation with its sample, plot and save
    plot_s: float = 0.0
    sample_token_s: float = 0.0  # a sampled token

    def seconds(self, eval_steps: float, sample_tokens: int) -> float:
        """One more step, then the run's end; `eval_steps`: an evaluation in training steps."""
        evaluation = self.evaluation_s
        if evaluation is None:
            evaluation = self.step_s * eval_steps / 3
        sample_s = 3 * sample_tokens * self.sample_token_s
        return END_MARGIN * (self.step_s + evaluation + self.plot_s + sample_s) + EXIT_S


# --------------------------------------------------------------------------- the run


def train(
    request: TrainRequest, log: Log = quiet, progress: TrainProgress | None = None
) -> TrainResult:
    """Run (or resume) training and return where it ended. Ctrl-C saves, then returns.

    `log` receives one-off messages (settings, where the run folder is); `progress` the
    loop's events (steps, evaluations), by default passed to `log` as plain lines. Under
    torchrun, rank 0 sets the run up and reports; the other ranks follow it.
    """
    # --max-time covers the whole command, set-up included
    started = time.perf_counter() if request.started is None else request.started
    d = distributed.start(str(request.overrides.get("device", "auto")))
    try:
        if not d.is_main:
            return _follow(d)
        with RunGuard() as guard:
            try:
                if request.resume:
                    parts = resume_run(request, log, guard, d.world_size)
                else:
                    parts = new_run(request, log, guard)
            except BaseException:
                distributed.broadcast(None, d)  # the other ranks stop too
                raise
            resumed = parts.state is not None
            distributed.broadcast((str(parts.run_dir), parts.cfg.to_dict(), resumed), d)
            run = Run(parts, log, d, started)
            run.progress = progress or TrainProgress(log)
            try:
                return run.loop()
            finally:
                run.metrics.close()
    finally:
        distributed.finish(d)


def _follow(d: Dist) -> TrainResult:
    """A rank other than 0: wait for rank 0's set-up, then train in step with it."""
    plan = distributed.broadcast(None, d)
    if plan is None:
        raise SLMError(f"rank {d.rank}: rank 0 could not start the run (its error says why)")
    run_dir, cfg, resumed = plan
    run = Run(follower_run(Path(run_dir), cfg, resumed), quiet, d)
    return run.loop()


class _NoMetrics:
    """The metrics of ranks other than 0: rank 0 alone writes metrics.jsonl."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class Run:
    """One training run's moving parts; `loop()` runs it to the end of its budget."""

    def __init__(
        self, parts: RunParts, log: Log, dist: Dist | None = None, started: float | None = None
    ):
        run_dir, data, model, cfg, state = (
            parts.run_dir,
            parts.data,
            parts.model,
            parts.cfg,
            parts.state,
        )
        self.run_dir, self.data, self.cfg, self.log = run_dir, data, cfg, log
        self.dist = dist or Dist()
        set_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda":
            # TF32 tensor cores for the fp32 matmuls left outside bf16 autocast (optimizer-free
            # parts, evaluation): ~10 bits of mantissa, ample for training, several times faster.
            torch.set_float32_matmul_precision("high")
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
        self.budget = plan_budget(cfg, self.model_cfg, len(self.train_tokens), self.dist.world_size)
        self.sampler = self._sampler(data, cfg)
        self.optimizer = make_optimizer(self.model, cfg, self.device, self.dtype)
        self.ddp: Any = self.model  # wrapped in DDP when the loop starts (a collective)
        self.loss_fn: Any = None
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
        self.metrics: Any = (
            MetricsLog(
                run_dir, cfg.wandb, cfg.tensorboard, {**cfg.to_dict(), **self.model_cfg.to_dict()}
            )
            if self.dist.is_main
            else _NoMetrics()
        )
        self.progress = TrainProgress(log)
        self.step, self.tokens, self.elapsed_s = 0, 0, 0.0
        self.startup_s = 0.0  # time to the end of the first step (compilation): not training
        # The clock of a time budget starts when training was asked for: preparing the data
        # and building the model count against --max-time, as they do for the user waiting.
        self.started = time.perf_counter() if started is None else started
        self.end = EndCost()
        # An evaluation's size in training steps, for the end's estimate before one is timed.
        eval_tokens = len(self.eval_windows) * self.model_cfg.context_len
        self.eval_steps = (
            eval_tokens / self.budget.tokens_per_step if len(self.val_tokens) >= 2 else 0
        )
        self.reserve_s = 0.0  # what the time budget keeps back for the run's end (rank 0's)
        self.last_val: EvalResult | None = None
        if state is not None:
            self._load_state(state)
            self.metrics.truncate_after(self.step)

    def start(self) -> None:
        """Ready the steps: DDP wraps the model (a collective: every rank calls it at once)
        and the loss function is built, compiled where that pays."""
        self.ddp = distributed.wrap(self.model, self.device, self.dist)
        self.loss_fn = make_loss_fn(
            self.ddp,
            self.device,
            self.dtype,
            want_compile(self.cfg.compile, self.device, self.budget),
            self.log,
            self.cfg.label_smoothing,
        )

    def _sampler(self, data: PreparedData, cfg: TrainConfig) -> Any:
        context_len = self.model_cfg.context_len
        ranks = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        if not data.is_chat:
            return BatchSampler(self.train_tokens, cfg.batch_size, context_len, cfg.seed, **ranks)
        sampler = ChatBatchSampler(
            self.train_tokens,
            data.mask("train"),
            data.conversations("train"),
            cfg.batch_size,
            context_len,
            cfg.seed,
            **ranks,
        )
        if sampler.skipped:
            self.log(f"warning: {sampler.skipped} conversations longer than the context skipped")
        return sampler

    # ------------------------------------------------------------------ loop

    def loop(self) -> TrainResult:
        """Train to the end of the budget, or until Ctrl-C / SIGTERM / --stop-after."""
        self.start()
        self._announce()
        self.progress.start(self.budget, self.step, self.elapsed_s)
        try:
            with StopRequest(self.log) as stop:
                ended = self._steps(stop)
                stop_signal = stop.signal_name
                if ended != "done" and self.dist.is_main:
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
        if self.dist.is_main:
            self.plot()
        interrupted = ended == "interrupted"
        wants_sample = self.cfg.sample_tokens > 0 and not interrupted and self.dist.is_main
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
        start = self.started - self.elapsed_s
        while not self.budget.done(self.step, self.elapsed_s, self.reserve_s):
            t0 = time.perf_counter()
            progress = self.budget.progress(
                self.step, self.elapsed_s, self.startup_s, self.reserve_s
            )
            lr = lr_at(self.step, progress, self.cfg, self.budget.warmup_steps)
            loss = self.train_step(lr)
            self.step += 1
            self.tokens += self.budget.tokens_per_step
            # One verdict for all ranks: the mean loss, any stop request, rank 0's clock.
            loss, stop_now, self.elapsed_s, self.reserve_s = distributed.step_verdict(
                loss, stop.requested, time.perf_counter() - start, self._reserve_s(), self.dist
            )
            if self.step == 1:
                self.startup_s = self.elapsed_s
            step_s = time.perf_counter() - t0
            if self.step > 1:  # the first step's time is mostly compilation
                self.end.step_s = step_s
            tokens_per_s = self.budget.tokens_per_step / max(step_s, 1e-9)
            record = {
                "step": self.step,
                "tokens": self.tokens,
                "train_loss": loss,
                "lr": lr,
                "tokens_per_s": round(tokens_per_s, 1),
                "elapsed_s": round(self.elapsed_s, 3),
            }
            evaluating = self.step % self.cfg.eval_every == 0
            # An evaluation due now takes as long as the end's: there must be room for both,
            # or this one is the end.
            reserve_s = self.reserve_s * (2 if evaluating else 1)
            final = self.budget.done(self.step, self.elapsed_s, reserve_s)
            evaluated_at = time.perf_counter()
            if evaluating or final:
                record.update(self.evaluate())
            self.metrics.append(record)
            if "val_loss" in record and self.dist.is_main:
                self.plot()
            self.progress.advance(self.budget, self.step, self.elapsed_s, loss, lr, tokens_per_s)
            due = (
                (save_kind == "eval" and "val_loss" in record)
                or (save_kind == "steps" and self.step % int(save_every) == 0)
                or (save_kind == "seconds" and self.elapsed_s - last_save_s >= save_every)
            )
            if (due or final) and self.dist.is_main:
                self.save()
            if "val_loss" in record:
                self.end.evaluation_s = time.perf_counter() - evaluated_at
            if due or final:
                last_save_s = self.elapsed_s
            if final:
                break
            if stop_now:
                return "interrupted"
            if self.cfg.stop_after and self.step >= self.cfg.stop_after:
                return "stopped"
        return "done"

    def _reserve_s(self) -> float:
        """Seconds a time budget keeps back for one more step and the run's end."""
        if not self.budget.max_time_s:
            return 0.0
        reserve = self.end.seconds(self.eval_steps, self.cfg.sample_tokens)
        return min(reserve, 0.5 * self.budget.max_time_s)

    def train_step(self, lr: float) -> float:
        """One optimizer step; out of memory, it halves the micro-batch and tries again.

        The first steps are the probe: a batch that does not fit becomes two of half the
        size, accumulated, until it does, so `--tokens-per-step` (and, since the sampler's
        stream is drawn in order, the very windows of each step) stay what was asked.
        """
        sampler_state = copy.deepcopy(self.sampler.state_dict())
        while True:
            try:
                return self._step(lr)
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self._halve_micro_batch()
                self.sampler.load_state_dict(sampler_state)

    def _halve_micro_batch(self) -> None:
        batch = self.sampler.batch_size
        if batch == 1 or self.dist.enabled:
            hint = "lower --context-len or use a smaller model"
            if self.dist.enabled:  # the other ranks are inside the same all-reduce: stop all
                hint = "lower --batch-size (raise --tokens-per-step to keep the step size)"
            raise SLMError(f"out of memory at micro-batch {batch}", hint=hint)
        self.sampler.batch_size = batch // 2
        accum = self.budget.accum_steps * 2  # an odd batch loses a window a micro-batch
        self.budget = replace(self.budget, accum_steps=accum)
        self.log(
            f"warning: out of memory at micro-batch {batch}; continuing with {batch // 2} "
            f"x {accum} accumulated"
        )

    def _step(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's matrices have their own
            if group.get("muon"):
                group["momentum"] = muon_momentum_at(self.step)
        total = 0.0
        accum = self.budget.accum_steps
        for micro in range(accum):
            x, y = self._batch()
            # DDP all-reduces gradients in backward: only once, on the last micro-batch.
            last = micro == accum - 1
            with nullcontext() if last or not self.dist.enabled else self.ddp.no_sync():
                loss, cross_entropy = self.loss_fn(x, y)
                (loss / accum).backward()
            total += cross_entropy.item()
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
        if len(self.val_tokens) < 2 or not self.dist.is_main:
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

    def plot(self) -> None:
        started = time.perf_counter()
        plot_losses(self.metrics.records, self.run_dir / PLOT_FILE)
        self.end.plot_s = time.perf_counter() - started

    def sample_text(self, max_new_tokens: int) -> str:
        """A short continuation of <|endoftext|>, to watch the model learn."""
        from slm.generation.generation import generate_text

        started = time.perf_counter()
        text = generate_text(
            self.model,
            self.tokenizer,
            "",
            max_new_tokens=max_new_tokens,
            temperature=0.8,
            top_k=50,
            seed=self.cfg.seed,
            device=self.device,
        )
        self.end.sample_token_s = (time.perf_counter() - started) / max(1, max_new_tokens)
        return text

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
            f"({b.accum_steps} x batch {self.cfg.batch_size}"
            + (f" x {self.dist.world_size} processes" if self.dist.enabled else "")
            + ")\n"
            f"device: {self.device.type}, {str(self.dtype).replace('torch.', '')}, "
            f"{torch.get_num_threads()} threads; budget: {' or '.join(budget)}\n"
            + (
                f"optimizer: Muon for the hidden matrices (lr {self.cfg.muon_lr:g}), AdamW for "
                f"the rest (lr {self.cfg.lr:g})"
                if self.cfg.optimizer == "muon"
                else f"optimizer: AdamW (lr {self.cfg.lr:g})"
            )
        )
