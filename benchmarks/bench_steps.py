"""Whole generations on each CPU decode step: `python benchmarks/bench_steps.py [--rounds N]`.

seed-2.5m with random weights, 200 new tokens after a 32-token prompt, at batch 1 (greedy and
temperature 0.8) and batch 8, on one thread and on every core. Each case runs once per step
per round, the steps interleaved, so all of them see the same neighbours' load; the figure
is the median tokens/s over the rounds, with the spread (max/min - 1).

Generation picks its step with `slm.generation.steps.lean_step`; this script swaps that
choice for each step in turn. The compiled step is batch 1 only, so batch 8 compares numpy
and torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

import slm.generation.generation as generation
from slm.bench.generation import PROMPT_TOKENS, prompt_of, seed_model, synthetic_tokenizer
from slm.bench.measure import summarize
from slm.config import PRESETS, SampleConfig
from slm.device import available_cores, set_threads
from slm.generation.compiled_step import CompiledDecodeStep, numba_available
from slm.generation.cpu_step import CpuDecodeStep
from slm.generation.decode_step import DecodeStep

STEPS: dict[str, Any] = {
    "compiled": CompiledDecodeStep,
    "numpy": CpuDecodeStep,
    "torch": DecodeStep,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model, tokenizer = seed_model(), synthetic_tokenizer(PRESETS["seed-2.5m"]["vocab_size"])
    prompt = prompt_of(tokenizer, PROMPT_TOKENS)
    steps = {k: v for k, v in STEPS.items() if k != "compiled" or numba_available()}
    cases = [
        (threads, batch, temperature)
        for threads in sorted({1, available_cores()})
        for batch, temperature in ((1, 0.0), (1, 0.8), (8, 0.8))
    ]
    speeds: dict[tuple, list[float]] = {}
    for _ in range(args.rounds + 1):  # the first round warms up and is not counted
        for threads, batch, temperature in cases:
            set_threads(threads)
            settings = SampleConfig(
                max_new_tokens=200, num_samples=batch, temperature=temperature, seed=0,
                ignore_eot=True,
            )  # fmt: skip
            for name, step in steps.items():
                if batch > 1 and step is CompiledDecodeStep:
                    continue
                generation.lean_step = lambda model, cache, _tokens, step=step: step(model, cache)
                result = generation.generate(model, tokenizer, prompt, settings)
                speeds.setdefault((threads, batch, temperature, name), []).append(
                    result.tokens_per_s
                )
    print("| batch, threads, sampling | " + " | ".join(steps) + " |")
    print("|---" * (len(steps) + 1) + "|")
    for threads, batch, temperature in cases:
        cells = []
        for name in steps:
            runs = speeds.get((threads, batch, temperature, name))
            if runs is None:
                cells.append("—")
                continue
            runs = runs[1:]
            s = summarize(runs)
            cells.append(f"{s['median']:,.0f} ({s['spread']:.0%})")
        sampling = "greedy" if temperature == 0 else f"temperature {temperature}"
        label = f"B{batch}, {threads} thread{'s' if threads > 1 else ''}, {sampling}"
        print(f"| {label} | " + " | ".join(cells) + " |")
    torch.set_num_threads(available_cores())
    return 0


if __name__ == "__main__":
    sys.exit(main())
