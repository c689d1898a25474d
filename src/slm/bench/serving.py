"""The serving load test: `slm serve` under 16 concurrent clients against one at a time.

Starts a real `slm serve` process on a free loopback port (the server as users run it:
its own process, its default threads) and sends the same requests twice from this
process's event loop: first one at a time (the baseline: nothing to batch), then from
`clients` concurrent clients, each sending its `requests_per_client` requests in turn.
Every request asks for exactly `max_tokens` tokens (`ignore_eos`), so both phases produce
the same tokens. Reported per phase: every request answered or not, p50/p95 latency
(request sent to whole response read), total tokens/s (completion tokens / phase wall
time), and how many requests the engine decoded together (its /health counters).
Needs the serve extra and httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slm.bench.generation import prompt_of, seed_model, synthetic_tokenizer
from slm.checkpoint import TOKENIZER_FILE, save_model
from slm.config import PRESETS

CLIENTS = 16
REQUESTS_PER_CLIENT = 10
MAX_TOKENS = 64
PROMPT_TOKENS = 32
REQUEST_TIMEOUT_S = 120.0


def serving_suite(
    model_dir: str | os.PathLike | None = None,
    clients: int = CLIENTS,
    requests_per_client: int = REQUESTS_PER_CLIENT,
    max_tokens: int = MAX_TOKENS,
) -> dict[str, Any]:
    """Both phases against one server; `model_dir` None: seed-2.5m with random weights."""
    label = str(model_dir) if model_dir else "seed-2.5m (random weights)"
    with tempfile.TemporaryDirectory() as tmp:
        if model_dir is None:
            model_dir = Path(tmp) / "seed-2.5m"
            tokenizer = synthetic_tokenizer(PRESETS["seed-2.5m"]["vocab_size"])
            save_model(model_dir, seed_model())
            tokenizer.save(Path(model_dir) / TOKENIZER_FILE)
            prompt_text = prompt_of(tokenizer, PROMPT_TOKENS)
        else:
            prompt_text = "To be, or not to be, that is the question: whether 'tis nobler"
        prompts = [f"{i}. {prompt_text}" for i in range(clients * requests_per_client)]
        with _served(Path(model_dir)) as url:
            run = asyncio.run
            run(_phase(url, [prompts[:2]], max_tokens))  # warm-up: first-call costs
            sequential = run(_phase(url, [prompts], max_tokens))
            per_client = [prompts[c::clients] for c in range(clients)]
            concurrent = run(_phase(url, per_client, max_tokens))
    ratio = concurrent["tokens_per_s"] / sequential["tokens_per_s"]
    result = {
        "model": label,
        "clients": clients,
        "requests_per_client": requests_per_client,
        "max_tokens": max_tokens,
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup": ratio,
    }
    result["rows"] = table_rows(result)
    return result


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    n = result["clients"] * result["requests_per_client"]
    for label, phase in (("one at a time", "sequential"), ("concurrent", "concurrent")):
        r = result[phase]
        clients = f"{result['clients']} clients" if phase == "concurrent" else "1 client"
        rows.append(
            {
                "what": f"slm serve {result['model']}, {n} requests x "
                f"{result['max_tokens']} tokens, {label} ({clients})",
                "figure": f"{r['tokens_per_s']:,.0f} tokens/s, latency p50 {r['p50_s']:.2f} s / "
                f"p95 {r['p95_s']:.2f} s, {r['answered']}/{r['sent']} answered, "
                f"{r['mean_rows_per_step']:.1f} requests per step (mean)",
                "spread": "—",
            }
        )
    return rows


async def _phase(url: str, queues: list[list[str]], max_tokens: int) -> dict[str, Any]:
    """Each queue is one client sending its prompts in turn; all clients at once."""
    import httpx

    latencies: list[float] = []
    tokens = 0
    failures: list[str] = []

    async def client(http: httpx.AsyncClient, prompts: list[str]) -> None:
        nonlocal tokens
        for prompt in prompts:
            body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "seed": 0}
            sent = time.perf_counter()
            try:
                reply = await http.post(f"{url}/v1/completions", json=body)
                reply.raise_for_status()
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - sent)
            tokens += reply.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=len(queues) + 1)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        before = (await http.get(f"{url}/health")).json()
        start = time.perf_counter()
        await asyncio.gather(*(client(http, q) for q in queues))
        wall_s = time.perf_counter() - start
        after = (await http.get(f"{url}/health")).json()
    latencies.sort()
    return {
        "sent": sum(len(q) for q in queues),
        "answered": len(latencies),
        "failures": failures[:5],
        "wall_s": wall_s,
        "tokens": tokens,
        "tokens_per_s": tokens / wall_s,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": _percentile(latencies, 0.95),
        # The server's own counter: a running maximum, so read after this phase
        "peak_requests_per_step": after["peak_requests_per_step"],
        "mean_rows_per_step": (after["rows_decoded"] - before["rows_decoded"])
        / max(1, after["steps"] - before["steps"]),
        "cancelled": after["cancelled"] - before["cancelled"],
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already-sorted values.

    >>> _percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.0
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 1))  # ceil(n * q), at least 1
    return sorted_values[int(rank) - 1]


@contextlib.contextmanager
def _served(model_dir: Path) -> Iterator[str]:
    """`slm serve MODEL_DIR` on a free loopback port; yields its URL, stops it on exit."""
    import httpx

    with socket.socket() as s:  # a free port; the server binds it a moment later
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "slm", "serve", str(model_dir), "--port", str(port)]
    process = subprocess.Popen([*command, "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"slm serve exited: {process.communicate()[1]}")
            if time.monotonic() > deadline:
                raise RuntimeError("slm serve did not start within 120 s")
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
