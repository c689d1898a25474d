"""Generation speed of seed-2.5m on this machine: the KV cache, batching, threads, memory.

    python benchmarks/bench_generate.py           # ~1 minute, generation figures alone
    slm bench                                     # the whole suite, generation included

The model has random weights (speed does not depend on what it learned) and the tokenizer
is trained on generated text to the preset's 4096 tokens. Each figure is the median of
several runs with its spread (max/min - 1), runs of different variants interleaved, so a
neighbour's burst of CPU use shows as spread rather than as a wrong median.

Figures: tokens/s for 256 new tokens after a 32-token prompt, at batch 1 and 8, with and without
the cache, with 1 thread and with every core; time to the first token; the batch-1 decode step
(the one CPU generation uses, `slm.generation.compiled_step`'s at batch 1, the numpy one of
`slm.generation.cpu_step`, the torch one of `slm.generation.decode_step`, and the same step
through `GPT.forward`, interleaved) against
the time of the step's matrix products alone in numpy and in torch (the arithmetic floors) and
of sampling; and the peak RSS of a real `slm generate` process.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slm.bench.measure import summarize
from slm.checkpoint import TOKENIZER_FILE, save_model
from slm.config import PRESETS, ModelConfig, SampleConfig
from slm.device import available_cores
from slm.generation import compiled_step
from slm.generation.cpu_step import CpuDecodeStep, prepared_weights
from slm.generation.decode_step import DecodeStep
from slm.generation.generation import generate
from slm.generation.sampling import make_generator, sample_next_token
from slm.generation.steps import lean_step
from slm.model import GPT, KVCache
from slm.tokenizer.bpe import Tokenizer

PROMPT_TOKENS = 32
NEW_TOKENS = 256


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A BPE tokenizer trained on made-up words with some multi-byte characters (~1 s)."""
    rng = random.Random(0)
    syllables = [c + v for c in "ktrmsnlpzq" for v in "aeiouéü"] + ["日", "語", "の"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(6000)]
    docs = (
        " ".join(rng.choices(words[: rng.choice([100, 1000, 6000])], k=200)) for _ in range(1500)
    )
    return Tokenizer.train(docs, vocab_size=vocab_size)


def seed_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**PRESETS["seed-2.5m"])).eval()


def prompt_of(tokenizer: Tokenizer, n_tokens: int) -> str:
    """A prompt that encodes to `n_tokens` tokens (decoding a slice can merge differently)."""
    text = " ".join(f"word{i}" for i in range(4 * n_tokens))
    ids = tokenizer.encode(text)
    for cut in range(n_tokens, 0, -1):
        prompt = tokenizer.decode(ids[:cut])
        if len(tokenizer.encode(prompt)) <= n_tokens:
            return prompt
    return ""


# --------------------------------------------------------------------------- throughput


def throughput(
    model: GPT, tokenizer: Tokenizer, prompt: str, threads_list: list[int], repeats: int
) -> list[dict[str, Any]]:
    """Tokens/s for each (threads, batch, cache), the variants interleaved in each round."""
    variants = [(t, b, c) for t in threads_list for b in (1, 8) for c in (True, False)]
    runs: dict[tuple[int, int, bool], list[Any]] = {v: [] for v in variants}
    for round_index in range(repeats):
        for threads, batch, cached in variants:
            if not cached and round_index >= (2 if batch == 1 else 1):
                continue  # uncached runs are long and steady: fewer repeats
            torch.set_num_threads(threads)
            settings = SampleConfig(
                max_new_tokens=NEW_TOKENS, num_samples=batch, seed=round_index, ignore_eot=True
            )
            runs[(threads, batch, cached)].append(
                generate(model, tokenizer, prompt, settings, use_cache=cached)
            )
    rows = []
    for (threads, batch, cached), results in runs.items():
        rows.append(
            {
                "threads": threads,
                "batch": batch,
                "cache": cached,
                "prompt_tokens": results[0].prompt_tokens,
                "new_tokens": NEW_TOKENS,
                "tokens_per_s": summarize([r.tokens_per_s for r in results]),
                "decode_tokens_per_s": summarize(
                    [
                        (r.new_tokens - batch) / (r.elapsed_s - r.time_to_first_token_s)
                        for r in results
                    ]
                ),
                "time_to_first_token_ms": summarize(
                    [1000 * r.time_to_first_token_s for r in results]
                ),
            }
        )
    return rows


def first_token_ms(
    model: GPT, tokenizer: Tokenizer, prompt_lengths: list[int], repeats: int
) -> list[dict[str, Any]]:
    """Time to the first token at batch 1 on 1 thread (`slm generate`'s choice for it)."""
    torch.set_num_threads(1)
    rows = []
    for length in prompt_lengths:
        prompt = prompt_of(tokenizer, length)
        settings = SampleConfig(max_new_tokens=1, seed=0, ignore_eot=True)
        results = [generate(model, tokenizer, prompt, settings) for _ in range(repeats)]
        rows.append(
            {
                "prompt_tokens": results[0].prompt_tokens,
                "time_to_first_token_ms": summarize(
                    [1000 * r.time_to_first_token_s for r in results]
                ),
            }
        )
    return rows


# --------------------------------------------------------------------------- per-token anatomy


def _median_us(fn: Any, n: int, rounds: int = 5) -> float:
    """Median over `rounds` of the mean time of `n` calls, in microseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def _top_level_ops(fn: Any) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_parent is None)


@torch.inference_mode()
def anatomy(model: GPT, threads: int, steps: int) -> dict[str, float]:
    """Batch-1 decode step in parts: the step generation uses (`lean_step`: compiled on the
    CPU), the numpy step (batches), the torch step (what other devices use), the same step
    through `GPT.forward`, the matrix products alone in numpy and in torch, and sampling."""
    torch.set_num_threads(threads)
    config = model.config
    cache = KVCache(config, 1)
    model(torch.randint(0, config.vocab_size, (1, 64)), cache, last_only=True)
    token = torch.zeros(1, dtype=torch.long)
    lean = lean_step(model, cache)
    steps_by_name = {
        "model_step_us": lean,
        "numpy_step_us": CpuDecodeStep(model, cache),
        "torch_step_us": DecodeStep(model, cache),
        "forward_step_us": lambda t: model(t[:, None], cache, last_only=True),
    }

    def at_64(step: Any) -> Any:
        def run() -> None:
            cache.pos = 64  # decode at a fixed position: every call does the same work
            step(token)

        return run

    # The arithmetic: every weight matrix applied to one vector, nothing else.
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights.append(model.tok_emb.weight)  # the tied output head
    vectors = [torch.randn(1, 1, w.shape[1]) for w in weights]

    def torch_matmuls() -> None:
        for w, x in zip(weights, vectors, strict=True):
            F.linear(x, w)

    packed = prepared_weights(model)
    matrices = [m for layer in packed.layers for m in layer] + [packed.head]
    rows = [np.ones((1, m.shape[0]), dtype=np.float32) for m in matrices]

    def numpy_matmuls() -> None:
        for m, x in zip(matrices, rows, strict=True):
            x @ m

    logits = torch.randn(1, config.vocab_size)
    settings, generator = SampleConfig(), make_generator(0)
    # Interleaved rounds, so every step sees the same neighbours' load.
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(5):
        for name, step in steps_by_name.items():
            times[name].append(_median_us(at_64(step), steps // 5, rounds=1))
    return {
        "threads": threads,
        "model_step": type(lean).__name__,
        **{name: statistics.median(values) for name, values in times.items()},
        "matmul_floor_us": _median_us(numpy_matmuls, steps),
        "torch_matmul_floor_us": _median_us(torch_matmuls, steps),
        "sampling_us": _median_us(lambda: sample_next_token(logits, settings, generator), steps),
        "torch_ops_per_step": _top_level_ops(at_64(steps_by_name["torch_step_us"])),
        "forward_ops_per_step": _top_level_ops(at_64(steps_by_name["forward_step_us"])),
    }


# --------------------------------------------------------------------------- memory


# The child reports its own high-water mark. Not getrusage(RUSAGE_CHILDREN): subprocess
# starts children with vfork, and Linux folds the parent's memory into the child's peak at
# exec (this benchmark's ~300 MB made a 265 MB `slm generate` read as 354 MB).
_CHILD = """
import resource, sys
from slm.cli.main import main
code = main(sys.argv[1:])
try:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
except OSError:  # no /proc (macOS): the best the OS offers
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(kib, file=sys.stderr)
sys.exit(code)
"""


def cli_peak_rss(model: GPT, tokenizer: Tokenizer, prompt: str) -> dict[str, float]:
    """Peak RSS and wall time of a whole `slm generate` process (imports and load included)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_model(tmp, model)
        tokenizer.save(Path(tmp) / TOKENIZER_FILE)
        command = [
            sys.executable, "-c", _CHILD, "generate", tmp, prompt, "--json", "--seed", "0",
            "--max-new-tokens", str(NEW_TOKENS), "--ignore-eot", "--device", "cpu",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        wall_s = time.perf_counter() - start
    peak_kib = int(done.stderr.split()[-1])
    return {"peak_rss_mb": peak_kib / 1024, "wall_s": wall_s}


# --------------------------------------------------------------------------- the suite


def generate_suite(quick: bool = False) -> dict[str, Any]:
    """Every generation figure, plus `rows` (what, figure, spread) for the README table."""
    tokenizer = synthetic_tokenizer(PRESETS["seed-2.5m"]["vocab_size"])
    model = seed_model()
    prompt = prompt_of(tokenizer, PROMPT_TOKENS)
    cores = available_cores()
    compiled_step.load()  # figures for a process that has it loaded (chat, a long run)
    threads_list = sorted({1, cores})
    result: dict[str, Any] = {
        "model": "seed-2.5m (random weights)",
        "cores": cores,
        "throughput": throughput(model, tokenizer, prompt, threads_list, 2 if quick else 5),
        "anatomy": [anatomy(model, t, 100 if quick else 400) for t in threads_list],
        "first_token": first_token_ms(
            model, tokenizer, [PROMPT_TOKENS, model.config.context_len], 3 if quick else 7
        ),
        "slm_generate": cli_peak_rss(model, tokenizer, prompt),
        "compiled_step_failure": compiled_step.failure(),  # None: it loaded (or no numba)
    }
    torch.set_num_threads(cores)
    result["rows"] = table_rows(result)
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for r in result["throughput"]:
        what = (
            f"generate seed-2.5m B{r['batch']}, {'cache' if r['cache'] else 'no cache'}, "
            f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        )
        stat = r["tokens_per_s"]
        figure = (
            f"{stat['median']:,.0f} tokens/s, first token "
            f"{r['time_to_first_token_ms']['median']:.1f} ms"
        )
        rows.append({"what": what, "figure": figure, "spread": f"{stat['spread']:.0%}"})
    for a in result["anatomy"]:
        rows.append(
            {
                "what": f"decode step B1, {a['threads']} thread(s): {a['model_step']} / "
                "numpy step / its matmuls / sampling",
                "figure": f"{a['model_step_us']:.0f} / {a['numpy_step_us']:.0f} / "
                f"{a['matmul_floor_us']:.0f} / {a['sampling_us']:.0f} us",
                "spread": "—",
            }
        )
        if "torch_step_us" in a:
            rows.append(
                {
                    "what": f"decode step B1, {a['threads']} thread(s): torch step / its "
                    "matmuls / GPT.forward",
                    "figure": f"{a['torch_step_us']:.0f} / {a['torch_matmul_floor_us']:.0f} / "
                    f"{a['forward_step_us']:.0f} us ({a['torch_step_us'] / a['model_step_us']:.2f}"
                    f"x / {a['forward_step_us'] / a['model_step_us']:.2f}x the {a['model_step']})",
                    "spread": "—",
                }
            )
    for f in result["first_token"]:
        stat = f["time_to_first_token_ms"]
        rows.append(
            {
                "what": f"time to first token, B1, 1 thread, {f['prompt_tokens']}-token prompt",
                "figure": f"{stat['median']:.1f} ms",
                "spread": f"{stat['spread']:.0%}",
            }
        )
    cli = result["slm_generate"]
    rows.append(
        {
            "what": "`slm generate` 256 tokens, whole process",
            "figure": f"peak RSS {cli['peak_rss_mb']:.0f} MB, {cli['wall_s']:.1f} s",
            "spread": "—",
        }
    )
    return rows
