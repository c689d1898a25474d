"""Training speed beside a GPT-2-style reference model: `python benchmarks/bench_reference.py`.

slm's seed-2.5m (RMSNorm, rotary positions, SwiGLU, tied head) against the architecture
most small-GPT training scripts use (LayerNorm with biases, learned positions, a 4x GELU
MLP, tied head), written out below at the same shape: width 192, 4 layers, 3 heads,
context 256, vocabulary 4096, the same MLP weight count (SwiGLU 3 x 192 x 512, GELU
2 x 192 x 768). Both train the same way: the loss compiled with `torch.compile`, fused
AdamW, batch 16, float32, on every core; the figure is tokens/s over interleaved rounds
(median, and the spread max/min - 1), so both see the same neighbours' load, and their ratio.

This measures the models' step, not a whole training script: data loading, evaluation and
checkpoints are left out of both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from slm.bench.measure import summarize
from slm.bench.suite import machine_info
from slm.config import PRESETS, ModelConfig
from slm.device import set_threads
from slm.model import GPT


class ReferenceBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(ReferenceBlock(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.T


def train_step(model: nn.Module) -> tuple:
    """A compiled loss and fused AdamW: one call is one optimizer step on a fresh batch."""
    loss_fn = torch.compile(lambda x, y: F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss_fn(x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps a round")
    args = parser.parse_args()
    set_threads(0)
    shape = PRESETS["seed-2.5m"]
    batch, context = 16, shape["context_len"]
    torch.manual_seed(0)
    models = {
        "slm seed-2.5m": GPT(ModelConfig(**shape)),
        "GPT-2-style reference": ReferenceGPT(
            shape["vocab_size"], context, shape["d_model"], shape["n_layers"], shape["n_heads"]
        ),
    }
    steps = {name: train_step(model) for name, model in models.items()}
    data = torch.randint(0, shape["vocab_size"], (batch, context + 1))
    x, y = data[:, :-1], data[:, 1:]
    for step in steps.values():  # compile, then a few steps to settle
        for _ in range(3):
            step(x, y)
    speeds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            speeds[name].append(args.steps * batch * context / (time.perf_counter() - start))
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    processor, threads = machine_info()["processor"], torch.get_num_threads()
    print(f"{processor}, {threads} threads, float32, batch {batch} x {context}")
    print("| model | parameters | tokens/s (spread) |")
    print("|---|---|---|")
    for name, values in speeds.items():
        s = summarize(values)
        print(f"| {name} | {params[name] / 1e6:.2f} M | {s['median']:,.0f} ({s['spread']:.0%}) |")
    ours, reference = speeds.values()
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    print(
        f"\nslm / reference, round by round: {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
