"""What an optimizer step is made of: AdamW's parameter groups and the loss it minimizes.

`make_optimizer` and `make_loss_fn` are shared by the training loop (`slm.training.loop`) and
the throughput benchmark (`slm.bench.suite`), so the benchmark times the very step that training
takes, autocast and torch.compile included, without importing the loop. `want_compile` says when
compiling pays for itself. The learning rate each step uses is `slm.training.schedule`'s;
running the steps, accumulating gradients and clipping them is `slm.training.loop`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from slm.config import TrainConfig
from slm.model import GPT
from slm.training.muon import Muon, muon_groups
from slm.training.schedule import Budget


def make_optimizer(
    model: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: decaying norm gains would fight the norm.

    `--optimizer muon`: Muon for the hidden matrices instead (`slm.training.muon`), its
    orthogonalization in the run's precision `dtype` (fp16 is left to fp32: its range is
    too narrow for the iteration's squared Gram matrices).
    """
    if cfg.optimizer == "muon":
        groups = muon_groups(model, cfg.lr, cfg.muon_lr, cfg.weight_decay)
        ns_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        return Muon(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), ns_dtype=ns_dtype)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")  # one kernel for all tensors instead of a loop
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def want_compile(setting: str, device: torch.device, budget: Budget) -> bool:
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


def smoothed_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to train on, the plain cross-entropy to report) for logits (B, T, vocab).

    Label smoothing trains each position towards (1 - smoothing) on its next token and
    `smoothing` spread evenly over the vocabulary, which adds `smoothing` times the mean
    over the vocabulary of -log p to the loss: a model is held back from putting all of
    its probability on one token. A run over several epochs learns to be sure of its
    training text; on text it has not seen that certainty costs more than it wins
    (benchmarks/README.md). The plain cross-entropy is what the progress bar, metrics and
    plot show, so a training loss still compares with a validation loss. Targets of -100
    (a chat fine-tune's prompt tokens) count in neither.
    """
    log_probs = F.log_softmax(logits.float().flatten(0, 1), dim=-1)
    targets = targets.flatten()
    nll = F.nll_loss(log_probs, targets)  # ignores targets of -100
    if not smoothing:
        return nll, nll
    kept = (targets != -100).float()
    uniform = -(log_probs.mean(dim=-1) * kept).sum() / kept.sum()
    return (1 - smoothing) * nll + smoothing * uniform, nll


def make_loss_fn(
    model: GPT,
    device: torch.device,
    dtype: torch.dtype,
    compile_it: bool,
    log: Callable[[str], None],
    label_smoothing: float = 0.0,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) -> (loss to train on, mean cross-entropy), under autocast when training in
    bf16 (`smoothed_cross_entropy`: the two are the same without label smoothing).

    The loss is part of the compiled function so that log-softmax over the vocabulary fuses
    with the output head instead of writing the (B, T, vocab) probabilities out twice.
    """

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = (
            nullcontext()
            if dtype == torch.float32
            else torch.autocast(device_type=device.type, dtype=dtype)
        )
        with autocast:
            logits = model(x)
        return smoothed_cross_entropy(logits, y, label_smoothing)

    if not compile_it:
        return loss_fn
    compiled = torch.compile(loss_fn)
    state = {"fn": compiled}

    def guarded(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
