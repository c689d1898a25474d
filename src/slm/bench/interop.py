"""The same model in slm and in the tools it exports to: export time and size, how far each
consumer's logits are from slm's, and batch-1 greedy decode speed side by side.

Engines: slm (`LoadedModel.complete`), transformers (`generate` on the hf export) and
llama.cpp through llama-cpp-python on the GGUF export in f32 and q8_0; those whose package is
missing are left out and named. All run on the same number of threads (1 by default:
llama.cpp's default and slm's choice for a small model at batch 1), in interleaved rounds
so that a noisy neighbour slows every engine alike; each figure is the median of the rounds
with its spread. Each round decodes `new_tokens` greedily after a `PROMPT_TOKENS`-token
prompt, timed as a whole call (prefill included, as `slm generate --stats` reports it).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slm.bench.generation import PROMPT_TOKENS, prompt_of, seed_model, synthetic_tokenizer
from slm.bench.measure import summarize
from slm.config import PRESETS
from slm.generation import compiled_step

Engine = Callable[[], int]  # decodes once, returns the number of new tokens


def interop_suite(
    model_dir: str | os.PathLike | None = None,
    rounds: int = 5,
    new_tokens: int = 128,
    log: Callable[[str], None] = lambda _m: None,
    threads: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    """Every interop figure for `model_dir` (default: seed-2.5m with random weights); decode
    speed once per thread count in `threads`, every engine on that many threads."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if model_dir is None:
            model_dir = _seed_model_dir(work / "seed")
        result: dict[str, Any] = {"model": str(model_dir), "new_tokens": new_tokens}
        result["exports"] = exports(Path(model_dir), work)
        for name, e in result["exports"].items():
            log(f"export {name}: {e['time_s']:.2f} s, {e['size_mb']:.2f} MB")
        import slm

        ours = slm.load(model_dir, device="cpu")
        compiled_step.load()  # as in a process that has decoded a while: steady-state speed
        result["decode_tokens_per_s"] = {}
        for count in threads:
            torch.set_num_threads(count)
            engines, missing = _engines(ours, work, new_tokens, count)
            if "logit_max_abs_diff" not in result:
                result["missing"] = missing
                result["logit_max_abs_diff"] = logit_diffs(ours.config, engines)
            speeds = decode_speeds(engines, rounds, lambda m, c=count: log(f"{c} thread(s): {m}"))
            result["decode_tokens_per_s"][str(count)] = speeds
    return result


def _seed_model_dir(folder: Path) -> Path:
    from slm import checkpoint

    tokenizer = synthetic_tokenizer(PRESETS["seed-2.5m"]["vocab_size"])
    checkpoint.save_model(folder, seed_model())
    tokenizer.save(folder / checkpoint.TOKENIZER_FILE)
    return folder


def exports(model_dir: Path, work: Path) -> dict[str, dict[str, float]]:
    """Time and size of the hf export and of the GGUF export in each dtype."""
    from slm.export.hf import export_hf

    done = {"hf": export_hf(model_dir, work / "hf")}
    if importlib.util.find_spec("gguf"):
        from slm.export.gguf import GGUF_DTYPES, export_gguf

        for dtype in GGUF_DTYPES:
            done[f"gguf {dtype}"] = export_gguf(model_dir, work / f"model-{dtype}.gguf", dtype)
    return {k: {"time_s": r.time_s, "size_mb": r.size_bytes / 1e6} for k, r in done.items()}


def _engines(
    ours: Any, work: Path, new_tokens: int, threads: int
) -> tuple[dict[str, Any], list[str]]:
    """name -> (decode function, logits function) for every engine that can run here."""
    prompt = prompt_of(ours.tokenizer, PROMPT_TOKENS)
    ids = ours.tokenizer.encode(prompt)
    # llama.cpp cannot decode past its context (slm slides its window): stay inside it
    new_tokens = min(new_tokens, ours.config.context_len - len(ids))

    def slm_decode() -> int:
        out = ours.complete(prompt, max_new_tokens=new_tokens, temperature=0.0, ignore_eot=True)
        return out.new_tokens

    def slm_logits(x: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return ours.model(torch.tensor([x]))[0]

    engines: dict[str, Any] = {"slm": (slm_decode, slm_logits)}
    missing = []
    if importlib.util.find_spec("transformers"):
        engines["transformers"] = _transformers_engine(work / "hf", ids, new_tokens)
    else:
        missing.append("transformers")
    if importlib.util.find_spec("llama_cpp") and (work / "model-f32.gguf").is_file():
        for dtype in ("f32", "q8_0"):
            path = work / f"model-{dtype}.gguf"
            engines[f"llama.cpp {dtype}"] = _llama_cpp_engine(
                path, ids, new_tokens, ours.config, threads
            )
        engines["llama.cpp f16 (logits only)"] = _llama_cpp_engine(
            work / "model-f16.gguf", ids, new_tokens, ours.config, threads
        )
    else:
        missing.append("llama.cpp (llama-cpp-python)")
    return engines, missing


def _transformers_engine(folder: Path, ids: list[int], new_tokens: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.tensor([ids])

    def decode() -> int:
        with torch.no_grad():
            out = model.generate(
                prompt,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        return out.shape[1] - prompt.shape[1]

    def logits(x: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([x])).logits[0]

    return decode, logits


def _llama_cpp_engine(
    path: Path, ids: list[int], new_tokens: int, config: Any, threads: int
) -> tuple[Any, Any]:
    import llama_cpp

    def load(**options: Any) -> Any:
        return llama_cpp.Llama(
            str(path),
            n_ctx=config.context_len,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
            **options,
        )

    # Decoding runs as users run llama.cpp (its f16 KV cache); the logits are compared with
    # an f32 cache and every position kept, so that they show the weights' own difference.
    runner = load(logits_all=True)  # else llama-cpp-python keeps no logits (one row a step)
    exact = load(logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)

    def decode() -> int:
        runner.reset()
        runner.eval(ids)
        for _ in range(new_tokens):
            token = int(runner.scores[runner.n_tokens - 1].argmax())
            runner.eval([token])
        return new_tokens

    def logits(x: list[int]) -> torch.Tensor:
        exact.reset()
        exact.eval(x)
        return torch.tensor(exact.scores[: len(x)])

    return decode, logits


def logit_diffs(config: Any, engines: dict[str, Any]) -> dict[str, float]:
    """max |logit - slm's logit| over a context-long random sequence, per engine."""
    _, slm_logits = engines["slm"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (config.context_len,), generator=generator).tolist()
    expected = slm_logits(ids)
    diffs = {"slm logits range": float(expected.max() - expected.min())}
    for name, (_, logits) in engines.items():
        if name != "slm":
            diffs[name] = float((logits(ids) - expected).abs().max())
    return diffs


RATIO_BASE = "llama.cpp f32"
RATIO = f"slm / {RATIO_BASE}"


def decode_speeds(
    engines: dict[str, Any], rounds: int, log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Tokens/s per engine over interleaved rounds (a warm-up round first, not counted).

    With llama.cpp f32 there, also "slm / llama.cpp f32": the ratio of the two within each
    round (median, lowest, highest). Both engines see the same neighbours' load in a round,
    so the ratio holds steady on a busy machine where each engine's own spread does not.
    """
    timed = {k: v[0] for k, v in engines.items() if "logits only" not in k}
    speeds: dict[str, list[float]] = {name: [] for name in timed}
    for round_index in range(rounds + 1):
        for name, decode in timed.items():
            start = time.perf_counter()
            n = decode()
            if round_index:
                speeds[name].append(n / (time.perf_counter() - start))
    stats = {name: summarize(values) for name, values in speeds.items()}
    for name, s in stats.items():
        log(f"decode {name}: {s['median']:,.0f} tokens/s (spread {s['spread']:.0%})")
    if "slm" in speeds and RATIO_BASE in speeds:
        ratios = [a / b for a, b in zip(speeds["slm"], speeds[RATIO_BASE], strict=True)]
        stats[RATIO] = {
            "median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)
        }  # fmt: skip
    return stats


def markdown(result: dict[str, Any]) -> str:
    """The interop figures as three small tables."""
    lines = ["| export | time | size |", "|---|---|---|"]
    for name, e in result["exports"].items():
        lines.append(f"| {name} | {e['time_s']:.2f} s | {e['size_mb']:.2f} MB |")
    diffs = dict(result["logit_max_abs_diff"])
    spread = diffs.pop("slm logits range")
    lines += [
        "",
        f"| consumer | max abs logit diff vs slm (logits span {spread:.1f}) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {d:.2g} |" for name, d in diffs.items()]
    speeds = result["decode_tokens_per_s"]
    counts = list(speeds)
    header = " | ".join(f"{c} thread{'s' if c != '1' else ''}: tokens/s (spread)" for c in counts)
    lines += ["", f"| engine, batch 1, {result['new_tokens']} new tokens | {header} |"]
    lines.append("|---|" + "---|" * len(counts))
    for name in (n for n in speeds[counts[0]] if n != RATIO):
        cells = " | ".join(
            f"{speeds[c][name]['median']:,.0f} ({speeds[c][name]['spread']:.0%})" for c in counts
        )
        lines.append(f"| {name} | {cells} |")
    if RATIO in speeds[counts[0]]:
        ratios = ", ".join(
            f"{speeds[c][RATIO]['median']:.2f}x on {c} thread{'s' if c != '1' else ''} "
            f"(rounds {speeds[c][RATIO]['low']:.2f}-{speeds[c][RATIO]['high']:.2f}x)"
            for c in counts
        )
        lines.append(f"\nslm / llama.cpp f32 (same weights), round by round: {ratios}.")
    if result["missing"]:
        lines.append(f"\nNot measured (not installed): {', '.join(result['missing'])}.")
    return "\n".join(lines) + "\n"
