"""Muon for the hidden matrices, AdamW for the rest: `slm train --optimizer muon`.

Muon (momentum, orthogonalized) replaces each weight matrix's update by the nearest
semi-orthogonal matrix to its momentum: every direction the gradient points in moves by
the same amount, instead of the few largest directions dominating as they do in SGD or
Adam. It is the change that sped up small-GPT training runs most in public speedruns.
What it does not suit, it leaves to AdamW: the embedding (here also the tied output head),
whose rows are looked up one token at a time, and the norm gains, which are vectors.

The orthogonalization is five Newton-Schulz iterations, X <- aX + b(XX^T)X + c(XX^T)^2 X,
with coefficients chosen to push every singular value towards 1 quickly rather than
exactly (they land within about 0.7-1.2, which trains as well as an exact polar factor
and costs a few small matrix products per step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """A matrix (m, n), or a stack (k, m, n), with g's singular vectors and singular values
    near 1.

    A stack of same-shape matrices goes through at once: one batched product per step of
    the iteration instead of one per matrix (seed-2.5m's 16 matrices are 4 shapes). A tall
    matrix is iterated as its transpose, so the Gram matrix X X^T is the smaller square.
    Each step is two fused multiply-adds (`baddbmm`: beta * input + alpha * batch product),
    a quarter faster on a CPU than the products and sums apart.
    """
    if g.dim() == 2:
        return orthogonalize(g[None], steps)[0]
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1 to start
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, polynomial, x, beta=a)  # a X + (b G + c G^2) X
    return x.mT if tall else x


def update_scale(rows: int, cols: int) -> float:
    """An orthogonal update has unit singular values whatever its shape; a tall matrix (more
    outputs than inputs) gets sqrt(out / in) so that its outputs move as much."""
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon on the groups marked `muon=True`, AdamW on the others, as one optimizer.

    One optimizer, not two, so that the training loop's step, gradient clipping and
    checkpoint (`state_dict`) stay as they are. Each group's learning rate is set by the
    loop as the schedule's rate times the group's `lr_scale`.
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        ns_dtype: torch.dtype = torch.float32,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=0.0, muon=False
        )
        super().__init__(list(groups), defaults)
        # The precision of the Newton-Schulz products: the training run's own. Under bf16
        # autocast they run in bf16 too, as fast as the model's products (half the time of
        # fp32 on a CPU with AVX512-BF16); the iteration only has to land the singular values
        # near 1, which bf16's 8 bits of mantissa do (benchmarks/README.md, "Where the bf16
        # step's time goes").
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["weight_decay"]:
                for p in params:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)

    def _muon(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same in by_shape.items():
            updates = [self.nesterov_update(p, group["momentum"]) for p in same]
            orthogonal = orthogonalize(torch.stack(updates).to(self.ns_dtype))
            scale = update_scale(shape[0], shape[1])
            for p, update in zip(same, orthogonal, strict=True):
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)

    def nesterov_update(self, p: torch.Tensor, momentum: float) -> torch.Tensor:
        """Folds p's gradient into its momentum and returns the Nesterov look-ahead,
        grad + momentum * buffer: the matrix that is orthogonalized."""
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
        state["momentum"].mul_(momentum).add_(p.grad)
        return p.grad.add(state["momentum"], alpha=momentum)

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))


# Under Muon the embedding (also the output head) decays this many times as fast as the
# hidden matrices: AdamW's steps on it are large beside its small entries, and a corpus seen
# over several epochs lets its rows grow to fit the training text. 3x gave 0.005-0.014 bits
# per byte at 5 M tokens over two seeds, 10x less, no decay on it lost 0.008
# (benchmarks/README.md, "A fourth session").
EMBEDDING_DECAY_SCALE = 3.0


def muon_groups(model: torch.nn.Module, lr: float, muon_lr: float, weight_decay: float) -> list:
    """The hidden matrices under Muon (at `muon_lr`), the embedding and gains under AdamW.

    Weight decay applies to every matrix, as with plain AdamW, and not to the gains; the
    hidden matrices shrink by the same factor a step as under AdamW (decay x AdamW's rate),
    the embedding by `EMBEDDING_DECAY_SCALE` times that.
    """
    hidden = [p for name, p in model.named_parameters() if p.dim() >= 2 and "layers." in name]
    embedding = [
        p for name, p in model.named_parameters() if p.dim() >= 2 and "layers." not in name
    ]
    gains = [p for p in model.parameters() if p.dim() < 2]
    return [
        {
            "params": hidden,
            "muon": True,
            "lr_scale": muon_lr / lr,
            "weight_decay": weight_decay * lr / muon_lr,
        },
        {
            "params": embedding,
            "muon": False,
            "lr_scale": 1.0,
            "weight_decay": weight_decay * EMBEDDING_DECAY_SCALE,
        },
        {"params": gains, "muon": False, "lr_scale": 1.0, "weight_decay": 0.0},
    ]
