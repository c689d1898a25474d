"""Training speed beside other GPT training code: `python benchmarks/bench_reference.py`.

slm's seed-2.5m (RMSNorm, rotary positions, SwiGLU, QK-norm, tied head) against the
architecture most small-GPT training scripts use (LayerNorm, learned positions, a 4x GELU
MLP, tied head) at the same shape: width 192, 4 layers, 3 heads, context 256, vocabulary
4096, the same MLP weight count (SwiGLU 3 x 192 x 512, GELU 2 x 192 x 768). Rows:

- "slm train's step": what `slm train` runs, Muon and all (`make_optimizer`, the compiled
  `make_loss_fn`, gradient clipping);
- "slm model, AdamW step" and "GPT-2-style reference" (written out below): the same
  harness for both models, a compiled loss and fused AdamW, so the ratio is the models';
- with `--nanogpt DIR` (a checkout of nanoGPT; its model.py is imported from there, not
  shipped here): nanoGPT's GPT with its own train.py step (`torch.compile(model)`, its
  `configure_optimizers` AdamW, gradient clipping at 1.0), bias off as its train.py sets.

Batch 16, every core, in float32 and (`--dtype`) bfloat16 autocast; tokens/s over
interleaved rounds (median, and the spread max/min - 1), so all rows see the same
neighbours' load, and round-by-round ratios against the last row. This measures the
step, not a whole script: data loading, evaluation and checkpoints are left out of all.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slm.bench.measure import interleaved_rates, ratio_summary, summarize
from slm.bench.suite import machine_info, train_step
from slm.config import PRESETS, ModelConfig, TrainConfig
from slm.device import cpu_bf16_speedup, set_threads
from slm.model import GPT

RESULTS = Path(__file__).parent / "results" / "reference.md"


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


def adamw_step(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A compiled loss and fused AdamW: one call is one optimizer step on a fresh batch."""
    loss_fn = torch.compile(lambda x, y: F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss_fn(x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def nanogpt_step(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, Callable]:
    """nanoGPT's model from a checkout, stepped the way its train.py steps it."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no model.py in {folder}")
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        spec.loader.exec_module(module)
        shape = PRESETS["seed-2.5m"]
        config = module.GPTConfig(
            block_size=shape["context_len"],
            vocab_size=shape["vocab_size"],
            n_layer=shape["n_layers"],
            n_head=shape["n_heads"],
            n_embd=shape["d_model"],
            dropout=0.0,
            bias=False,
        )
        model = module.GPT(config)
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    compiled = torch.compile(model)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast(dtype):
            _, loss = compiled(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def _autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def in_dtype(step: Callable, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A step under autocast (for the harness whose loss does not set it itself)."""

    def wrapped(x: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast(dtype):
            step(x, y)

    return wrapped


def build(dtype: torch.dtype, nanogpt: Path | None) -> dict[str, tuple[nn.Module, Callable]]:
    shape = PRESETS["seed-2.5m"]
    torch.manual_seed(0)
    ours, ours_adamw = GPT(ModelConfig(**shape)), GPT(ModelConfig(**shape))
    reference = ReferenceGPT(
        shape["vocab_size"],
        shape["context_len"],
        shape["d_model"],
        shape["n_layers"],
        shape["n_heads"],
    )
    rows = {
        "slm train's step (Muon)": (ours, train_step(ours, TrainConfig(), dtype, True)),
        "slm model, AdamW step": (ours_adamw, in_dtype(adamw_step(ours_adamw), dtype)),
        "GPT-2-style reference, AdamW step": (reference, in_dtype(adamw_step(reference), dtype)),
    }
    if nanogpt is not None:
        rows["nanoGPT, its train.py step"] = nanogpt_step(nanogpt, dtype)
    return rows


def measure(dtype: torch.dtype, nanogpt: Path | None, rounds: int, steps: int) -> str:
    """Interleaved rounds of every row in one precision; a markdown table with ratios."""
    rows = build(dtype, nanogpt)
    shape = PRESETS["seed-2.5m"]
    batch, context = 16, shape["context_len"]
    data = torch.randint(0, shape["vocab_size"], (batch, context + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    for _, step in rows.values():  # compile, then a few steps to settle
        for _ in range(3):
            step(x, y)
    tokens = batch * context
    speeds = interleaved_rates(
        {name: (partial(step, x, y), tokens) for name, (_, step) in rows.items()}, rounds, steps
    )
    last = list(speeds)[-1]
    lines = [
        f"{str(dtype).removeprefix('torch.')}, batch {batch} x {context}",
        "",
        f"| step | parameters | tokens/s (spread) | / {last} (rounds) |",
        "|---|---|---|---|",
    ]
    for name, values in speeds.items():
        s = summarize(values)
        params = sum(p.numel() for p in rows[name][0].parameters())
        lines.append(
            f"| {name} | {params / 1e6:.2f} M | {s['median']:,.0f} ({s['spread']:.0%}) "
            f"| {ratio_summary(values, speeds[last])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps a round")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (its model.py)")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32"],
        help="precisions to measure (bf16 is autocast, as `slm train --dtype bfloat16`)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="Markdown file the run is appended to"
    )
    args = parser.parse_args()
    set_threads(0)
    processor, threads = machine_info()["processor"], torch.get_num_threads()
    speedup = cpu_bf16_speedup()
    report = [
        f"## {processor}, {threads} threads, {time.strftime('%Y-%m-%d %H:%M')}\n",
        f"bf16 matmul {speedup:.2f}x fp32 here (`--dtype auto` picks bf16 from 1.3x)\n",
    ]
    print("\n".join(report))
    for name in args.dtype:
        report.append(measure(getattr(torch, name), args.nanogpt, args.rounds, args.steps))
        print(report[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as f:  # every run kept, as the sweep's rows
        f.write("\n".join(report) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
