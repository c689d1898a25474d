"""Muon's orthogonalization, fused or not: `python benchmarks/bench_muon.py`.

`slm.training.muon.orthogonalize` runs each Newton-Schulz step as two fused multiply-adds
(`baddbmm`). This times `slm train`'s whole step (seed-2.5m, batch 16 x 256, compiled loss,
Muon, clipping) with it and with the same iteration written as separate products and sums
(the version before 2026-12-07's evening), interleaved round by round in one process, in
fp32 and in bf16 autocast, so that the ratio holds on a busy machine. Only the optimizer's
orthogonalization differs between the two; it is looked up at each step, so one compiled
model serves both.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import torch

from slm.bench.measure import interleaved_rates, rates_table
from slm.bench.suite import machine_info, train_step
from slm.config import PRESETS, ModelConfig, TrainConfig
from slm.device import set_threads
from slm.model import GPT
from slm.training import muon

FUSED = muon.orthogonalize


def unfused(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The iteration as it was: products and sums apart, a tall matrix on X^T X."""
    a, b, c = muon.NS_COEFFICIENTS
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    if x.shape[-2] > x.shape[-1]:
        for _ in range(steps):
            gram = x.mT @ x
            x = a * x + x @ (b * gram + c * gram @ gram)
        return x
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def measure(dtype: torch.dtype, rounds: int, steps: int) -> str:
    model_cfg = ModelConfig(**PRESETS["seed-2.5m"])
    torch.manual_seed(0)
    step = train_step(GPT(model_cfg), TrainConfig(), dtype, compile_it=True)
    data = torch.randint(0, model_cfg.vocab_size, (16, model_cfg.context_len + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def with_orthogonalize(fn) -> None:
        muon.orthogonalize = fn
        step(x, y)

    for _ in range(3):  # compile and settle
        step(x, y)
    tokens = 16 * model_cfg.context_len
    runs = {
        "fused (now)": (partial(with_orthogonalize, FUSED), tokens),
        "products apart (before)": (partial(with_orthogonalize, unfused), tokens),
    }
    rates = interleaved_rates(runs, rounds, steps)
    muon.orthogonalize = FUSED
    return f"{dtype}\n" + rates_table(rates, "products apart (before)", "Newton-Schulz")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps a round")
    args = parser.parse_args()
    set_threads(0)
    print(
        f"{machine_info()['processor']}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    for dtype in (torch.float32, torch.bfloat16):
        print(measure(dtype, args.rounds, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
