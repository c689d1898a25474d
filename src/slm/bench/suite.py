"""Measurements shared by `slm bench` and `python -m benchmarks`.

Each measurement runs in a fresh child process, so its peak RSS is its own and one
measurement's allocations cannot slow the next. Every figure is the median of several
repeats, reported with its spread (max/min - 1) so a noisy run shows itself. Ceilings
(the machine's fp32 and bf16 matrix-multiply peaks) are measured in the same run, so
"fraction of peak" compares like with like on a shared, noisy machine.

Model FLOPs per token = 6 N + 12 n_layers d_model context_len (N = parameters, the tied
embedding counted once): 6 N for the forward and backward matrix products, the second term
for attention scores and their weighted sum.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm import __version__
from slm.bench.measure import peak_rss_mb, summarize
from slm.fileio import write_json, write_text

if TYPE_CHECKING:  # torch is imported where it is used: `slm bench --help` stays quick
    import torch

    from slm.config import TrainConfig

Log = Callable[[str], None]
TRAIN_PRESETS = ("seed-2.5m", "small")  # the default model, and the next size up


# --------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    """Processor name, the flags that decide matmul speed, cores, and library versions."""
    import torch

    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    interesting = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]
    from slm.device import available_cores

    return {
        "processor": name,
        "flags": [f for f in interesting if f in flags],
        "cores": available_cores(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "slm": __version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def machine_slug(info: dict[str, Any]) -> str:
    """A file name for this machine's results, e.g. `amd-epyc-2c`."""
    base = (info.get("cuda") or info["processor"]).lower()
    keep = "".join(c if c.isalnum() else "-" for c in base)
    slug = "-".join(part for part in keep.split("-") if part)[:40]
    return f"{slug}-{info['cores']}c"


def _quiet(_message: str) -> None:
    """A log for work run in another process (a lambda cannot be sent there)."""


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `fn(*args)` in a fresh spawned process and return its result.

    A process pool executor, not `multiprocessing.Pool`: the latter's workers are daemons,
    which may not start processes, and encoding starts workers as `slm prepare` does.
    """
    with ProcessPoolExecutor(1, mp.get_context("spawn")) as executor:
        return executor.submit(fn, *args).result()


# --------------------------------------------------------------------------- ceilings


def matmul_peak(dtype_name: str, size: int = 1024, repeats: int = 7) -> dict[str, Any]:
    """GFLOP/s of a square matrix product: the ceiling training is measured against."""
    import torch

    from slm.device import set_threads

    set_threads()
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        rates.append(5 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return {"gflops": summarize(rates), "size": size}


# --------------------------------------------------------------------------- training


def flops_per_token(n_params: int, n_layers: int, d_model: int, context_len: int) -> int:
    return 6 * n_params + 12 * n_layers * d_model * context_len


def train_step(
    model: torch.nn.Module, cfg: TrainConfig, dtype: torch.dtype, compile_it: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x, y) -> loss: one optimizer step as `slm train` takes it (its optimizer, its loss
    under autocast, compiled or not, gradient clipping), without accumulation."""
    import torch

    from slm.training.optimizer import make_loss_fn, make_optimizer

    device = torch.device("cpu")
    optimizer = make_optimizer(model, cfg, device, dtype)
    loss_fn = make_loss_fn(model, device, dtype, compile_it, lambda _m: None, cfg.label_smoothing)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, _ = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def train_throughput(
    preset_name: str = "seed-2.5m",
    batch_size: int = 16,
    dtype_name: str = "float32",
    compile_it: bool = False,
    steps: int = 12,
    warmup: int = 3,
    context_len: int = 256,
) -> dict[str, Any]:
    """Training tokens/s of a preset on random tokens, through the real training step.

    Every preset is timed at the same `context_len`, so their figures compare.
    """
    import numpy as np
    import torch

    from slm.config import ModelConfig, TrainConfig, preset
    from slm.data.prepared import BatchSampler
    from slm.device import set_threads
    from slm.model import GPT, count_parameters

    set_threads()
    torch.manual_seed(0)
    cfg = ModelConfig(**{**preset(preset_name), "context_len": context_len})
    model = GPT(cfg).train()
    step = train_step(model, TrainConfig(), getattr(torch, dtype_name), compile_it)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 2_000_000).astype(np.uint16)
    sampler = BatchSampler(tokens, batch_size, cfg.context_len, seed=0)
    times, losses = [], []
    compile_start = time.perf_counter()
    for i in range(warmup + steps):
        start = time.perf_counter()
        losses.append(step(*sampler.next_batch()).item())
        if i == warmup - 1:
            warmup_s = time.perf_counter() - compile_start
        if i >= warmup:
            times.append(time.perf_counter() - start)
    tokens_per_step = batch_size * cfg.context_len
    n_params = count_parameters(model)
    return {
        "preset": preset_name,
        "batch_size": batch_size,
        "context_len": cfg.context_len,
        "dtype": dtype_name,
        "compile": compile_it,
        "parameters": n_params,
        "flops_per_token": flops_per_token(n_params, cfg.n_layers, cfg.d_model, cfg.context_len),
        "tokens_per_s": summarize([tokens_per_step / t for t in times]),
        "warmup_s": warmup_s,
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- prepare


def prepare_throughput(repeats: int = 3) -> dict[str, Any]:
    """Tokenizer training and encoding speed (MB/s) on the built-in corpus.

    Each repeat encodes with a fresh tokenizer (cold piece cache, workers started inside the
    timing), as `slm prepare` does; HF's own batch encode on all cores is the baseline.
    """
    from slm.data.corpus import iter_plays
    from slm.device import set_threads
    from slm.tokenizer.bpe import Tokenizer

    set_threads()
    docs = [text for _title, text in iter_plays()]
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    train_rates, encode_rates, hf_rates = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer = Tokenizer.train(iter(docs), vocab_size=4096)
        train_rates.append(mb / (time.perf_counter() - start))
        start = time.perf_counter()
        tokenizer.encode_batch(docs)
        encode_rates.append(mb / (time.perf_counter() - start))
        start = time.perf_counter()
        tokenizer.hf_encode_batch(docs)
        hf_rates.append(mb / (time.perf_counter() - start))
    return {
        "corpus_mb": mb,
        "train_mb_per_s": summarize(train_rates),
        "encode_mb_per_s": summarize(encode_rates),
        "hf_encode_mb_per_s": summarize(hf_rates),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- the suite


def run_suite(log: Log, quick: bool = False, compile_cpu: bool = True) -> dict[str, Any]:
    """Measure ceilings, prepare, train and generate on this machine."""
    steps = 6 if quick else 12
    results: dict[str, Any] = {"machine": machine_info(), "time": time.strftime("%Y-%m-%d %H:%M")}
    log(f"machine: {results['machine']['processor']}, {results['machine']['cores']} cores")
    results["peak"] = {d: run_isolated(matmul_peak, d) for d in ("float32", "bfloat16")}
    log(
        "matmul peak: "
        + ", ".join(f"{d} {r['gflops']['median']:.0f} GFLOP/s" for d, r in results["peak"].items())
    )
    results["prepare"] = run_isolated(prepare_throughput, 1 if quick else 3)
    log(
        f"prepare: {results['prepare']['train_mb_per_s']['median']:.2f} MB/s tokenizer training, "
        f"{results['prepare']['encode_mb_per_s']['median']:.2f} MB/s encoding"
    )
    results["train"] = []
    dtypes = ["float32"]
    peaks = {d: r["gflops"]["median"] for d, r in results["peak"].items()}
    if peaks["bfloat16"] >= peaks["float32"] / 4:
        dtypes.append("bfloat16")
    else:  # emulated (no AVX512-BF16/AMX): minutes per row, and training would never use it
        log("train bfloat16: skipped, bf16 matmuls are emulated on this processor")
    variants = [(d, False) for d in dtypes] + ([(d, True) for d in dtypes] if compile_cpu else [])
    for preset_name in TRAIN_PRESETS:
        for dtype_name, compile_it in variants:
            r = run_isolated(train_throughput, preset_name, 16, dtype_name, compile_it, steps)
            peak = results["peak"][dtype_name]["gflops"]["median"]
            r["mfu"] = r["tokens_per_s"]["median"] * r["flops_per_token"] / (peak * 1e9)
            results["train"].append(r)
            log(
                f"train {preset_name} {dtype_name}{' compiled' if compile_it else ''}: "
                f"{r['tokens_per_s']['median']:,.0f} tokens/s ({r['mfu']:.0%} of {dtype_name} "
                f"peak), peak RSS {r['peak_rss_mb']:.0f} MB"
            )
    from slm.bench.generation import generate_suite

    results["generate"] = run_isolated(generate_suite, quick)
    for row in results["generate"]["rows"]:
        log(f"{row['what']}: {row['figure']}")
    if serving_available():
        from slm.bench.serving import serving_suite

        size = {"clients": 4, "requests_per_client": 3} if quick else {}
        results["serve"] = serving_suite(**size)
        for row in results["serve"]["rows"]:
            log(f"{row['what']}: {row['figure']}")
    else:
        log("serve: skipped (pip install 'slm[serve]' httpx to measure it)")
    if importlib.util.find_spec("transformers"):  # llama.cpp joins in when it is installed
        from slm.bench.interop import interop_suite
        from slm.device import available_cores

        threads = tuple(sorted({1, available_cores()}))
        interop = run_isolated(interop_suite, None, 2 if quick else 5, 128, _quiet, threads)
        results["interop"] = interop
        for count, speeds in interop["decode_tokens_per_s"].items():
            for name, s in speeds.items():
                figure = f"{s['median']:,.0f} tokens/s" if "spread" in s else f"{s['median']:.2f}x"
                log(f"interop decode, {count} thread(s), {name}: {figure}")
    return results


def serving_available() -> bool:
    """The load test needs the serve extra and an HTTP client."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "httpx"))


def quality(budget: str = "10m", log: Log = lambda _m: None) -> dict[str, Any]:
    """Val bits per byte of seed-2.5m after `budget` of training on the built-in corpus.

    Scored on the whole held-out plays (every val token, non-overlapping windows), not the
    sample that training evaluates on.
    """
    import tempfile

    from slm.evaluate import evaluate_model
    from slm.training.loop import TrainRequest, train

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        result = train(TrainRequest(out=str(run_dir), overrides={"max_time": budget}), log=log)
        val = evaluate_model(run_dir, [], split="val", log=log)
        config = json.loads((run_dir / "train_config.json").read_text(encoding="utf-8"))
    return {
        "budget": budget,
        "steps": result.step,
        "tokens": result.tokens,
        "bpb": val.bpb,
        "loss": val.loss,
        "val_tokens": val.tokens,
        "val_bytes": val.bytes,
        "dtype": config["dtype"],
        "sample": result.sample[:400],
    }


def markdown_table(results: dict[str, Any]) -> str:
    """The README's table: one line per figure, with the spread of its repeats."""
    m = results["machine"]
    lines = [
        f"Machine: {m['processor']} ({m['cores']} cores; {', '.join(m['flags'])}), "
        f"torch {m['torch']}, slm {m['slm']}, {results['time']}.",
        "",
        "| what | figure | spread |",
        "|---|---|---|",
    ]

    def row(what: str, stat: dict[str, float], unit: str, fmt: str = ",.0f") -> None:
        lines.append(f"| {what} | {format(stat['median'], fmt)} {unit} | {stat['spread']:.0%} |")

    for dtype_name, r in results["peak"].items():
        row(f"matmul peak {dtype_name} ({r['size']}³)", r["gflops"], "GFLOP/s")
    p = results["prepare"]
    row(f"tokenizer training ({p['corpus_mb']:.1f} MB corpus)", p["train_mb_per_s"], "MB/s", ".2f")
    row("tokenization (encode)", p["encode_mb_per_s"], "MB/s", ".2f")
    if "hf_encode_mb_per_s" in p:  # absent from results written before slm.tokenizer.pieces
        row("tokenization, HF encode alone (baseline)", p["hf_encode_mb_per_s"], "MB/s", ".2f")
    for r in results["train"]:
        compiled = ", compiled" if r["compile"] else ""
        name = r.get("preset", "seed-2.5m")
        label = f"train {name} {r['dtype']}{compiled} (B{r['batch_size']}, T{r['context_len']})"
        lines.append(
            f"| {label} | {r['tokens_per_s']['median']:,.0f} tokens/s = {r['mfu']:.0%} of peak, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB | {r['tokens_per_s']['spread']:.0%} |"
        )
    for g in results.get("generate", {}).get("rows", []):
        lines.append(f"| {g['what']} | {g['figure']} | {g['spread']} |")
    for g in results.get("serve", {}).get("rows", []):
        lines.append(f"| {g['what']} | {g['figure']} | {g['spread']} |")
    interop = results.get("interop")
    for name, e in (interop or {}).get("exports", {}).items():
        lines.append(
            f"| export seed-2.5m {name} | {e['time_s']:.2f} s, {e['size_mb']:.2f} MB | — |"
        )
    for name, d in (interop or {}).get("logit_max_abs_diff", {}).items():
        if name != "slm logits range":
            lines.append(f"| max abs logit diff vs slm: {name} | {d:.2g} | — |")
    for count, speeds in (interop or {}).get("decode_tokens_per_s", {}).items():
        for name, st in speeds.items():
            if "spread" not in st:  # slm / llama.cpp f32, round by round
                lines.append(
                    f"| decode seed-2.5m B1, {count} thread(s): {name} | {st['median']:.2f}x "
                    f"| rounds {st['low']:.2f}-{st['high']:.2f}x |"
                )
                continue
            lines.append(
                f"| decode seed-2.5m B1, {count} thread(s): {name} | {st['median']:,.0f} "
                f"tokens/s | {st['spread']:.0%} |"
            )
    quality = results.get("quality")
    if quality:
        lines.append(
            f"| quality: seed-2.5m, {quality['budget']} CPU, val bpb (whole held-out plays)"
            + (f", measured {quality['measured']}" if "measured" in quality else "")
            + " "
            f"| {quality['bpb']:.3f} bits/byte | — |"
        )
    return "\n".join(lines) + "\n"


def carried_quality(results: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any] | None:
    """The quality figure of this machine's previous results file, if it has one.

    It is marked with the time of the run that measured it, which the table shows.
    """
    path = Path(folder) / f"{machine_slug(results['machine'])}.json"
    try:
        earlier = load_results(path)
    except (OSError, ValueError):
        return None
    figure = earlier.get("quality")
    if not figure:
        return None
    return {**figure, "measured": figure.get("measured", earlier.get("time", "an earlier run"))}


def write_results(results: dict[str, Any], folder: str | os.PathLike) -> tuple[Path, Path]:
    folder = Path(folder)
    slug = machine_slug(results["machine"])
    json_path, md_path = folder / f"{slug}.json", folder / f"{slug}.md"
    write_json(json_path, results)
    write_text(md_path, markdown_table(results))
    return json_path, md_path


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
