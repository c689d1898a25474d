"""The schedule: how long a run trains (its budget) and the learning rate along the way.

Pure maths over the settings, no torch: `plan_budget` turns --max-steps / --max-tokens /
--epochs / --max-time into steps and seconds, `lr_at(step, progress, cfg, warmup_steps)`
gives the learning rate at any point of that budget and `muon_momentum_at(step)` Muon's
momentum, so a test can draw the whole curve without training. The loop that follows the
schedule is `slm.training.loop`; the optimizer whose rate it sets, `slm.training.optimizer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slm.config import ModelConfig, TrainConfig

WARMUP_FRACTION = 0.1  # warmup never takes more than this share of the budget
DECAY_FRACTION = 0.3  # "wsd" decays over this last share of the budget
# Muon's momentum rises from the first figure to the second over the first steps.
MUON_MOMENTUM = (0.85, 0.95)
MUON_MOMENTUM_WARMUP = 300


def lr_at(step: int, progress: float, cfg: TrainConfig, warmup_steps: int) -> float:
    """Learning rate: linear warmup, then a decay from lr down to lr * min_lr_ratio.

    The decay is `cfg.lr_schedule`'s shape: "wsd" (warmup-stable-decay) holds the peak rate
    and falls to the floor over the last 30% of the budget, as 1 - sqrt of the share of the
    decay done; "cosine" falls along a half cosine from the start. `progress` in [0, 1] is
    how much of the budget is spent (steps, tokens or time), so the decay ends where the
    budget does whatever kind of budget it is. Warmup ends after `warmup_steps` or a tenth
    of the budget, whichever comes first: a 1-minute run on a slow machine may only take 100
    steps in all.
    """
    floor = cfg.lr * cfg.min_lr_ratio
    progress = min(max(progress, 0.0), 1.0)
    if cfg.lr_schedule == "wsd":
        # Learning at the peak for longer and annealing at the end both lower the final loss.
        # The decay falls as 1 - sqrt(share of it done): steeply at first, then a long tail
        # at low rates; 0.006-0.011 bits/byte better than a straight line at 5 M tokens.
        done = max(0.0, 1.0 - (1.0 - progress) / DECAY_FRACTION)
        decayed = floor + (cfg.lr - floor) * (1.0 - math.sqrt(done))
    else:
        decayed = floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))
    if not warmup_steps:
        return decayed
    warmup = min(1.0, max((step + 1) / warmup_steps, progress / WARMUP_FRACTION))
    return decayed * warmup


def muon_momentum_at(step: int) -> float:
    """Muon's momentum: 0.85 at the first step, rising in a straight line to 0.95 at step 300.

    Early on the gradient turns quickly and a long memory of it points the update where the
    loss was, not where it is; later the memory averages out the batches' noise. Measured
    against a constant 0.95 at 5 M tokens: benchmarks/README.md, "A fourth session".
    """
    start, end = MUON_MOMENTUM
    return start + (end - start) * min(1.0, (step + 1) / MUON_MOMENTUM_WARMUP)


@dataclass(frozen=True)
class Budget:
    """When training stops: the first of steps, wall-clock time (seconds) reached."""

    total_steps: int  # 0 when only a time budget is set
    max_time_s: float
    accum_steps: int  # micro-batches per optimizer step
    tokens_per_step: int
    warmup_steps: int

    def progress(
        self, step: int, elapsed_s: float, startup_s: float = 0.0, reserve_s: float = 0.0
    ) -> float:
        """The share of the budget spent. A time budget counts from `startup_s`, when steps
        began to flow: the first step's compilation (15-50 s on a CPU) is not training, and
        a schedule that counted it would skip its warmup and decay too early. It ends
        `reserve_s` before the budget does: the time the run's end takes (`done`)."""
        by_steps = step / self.total_steps if self.total_steps else 0.0
        by_time = 0.0
        if self.max_time_s:
            end_s = self.max_time_s - reserve_s
            startup_s = min(startup_s, 0.9 * end_s)  # a budget all startup: plain time
            by_time = max(0.0, elapsed_s - startup_s) / (end_s - startup_s)
        return max(by_steps, by_time)

    def done(self, step: int, elapsed_s: float, reserve_s: float = 0.0) -> bool:
        """Steps are spent, or the wall-clock budget (startup included) would be by what
        still has to run: `reserve_s`, the next step and the run's final evaluation and save,
        so that the whole command ends within --max-time."""
        by_steps = self.total_steps and step >= self.total_steps
        return bool(by_steps or (self.max_time_s and elapsed_s + reserve_s >= self.max_time_s))


def plan_budget(
    cfg: TrainConfig, model: ModelConfig, train_tokens: int, world_size: int = 1
) -> Budget:
    """Turn --max-steps / --max-tokens / --epochs / --max-time into steps and seconds.

    `--tokens-per-step` is the global figure: `world_size` processes (torchrun) each run a
    `--batch-size` micro-batch, and accumulation makes up the rest.
    """
    batch_tokens = cfg.batch_size * model.context_len * world_size
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
