"""Quality per training token: seed-2.5m on the built-in corpus, one change at a time.

    python benchmarks/quality_sweep.py --variants baseline muon --seeds 1 2 --tokens 5e6
    python benchmarks/quality_sweep.py --table        # the table of every run so far

Each run trains from scratch on the built-in corpus (prepared once, `--data`), stops after a
fixed number of training tokens, and is scored on every token of the held-out plays (the
split `slm bench --quality` uses), so a figure depends on what a change does to each token's
worth of learning, not on how busy the machine was. Wall time and tokens/s are recorded
beside it (they do depend on the machine). Results are appended to
benchmarks/results/quality-sweep.jsonl, one line per run; `--table` summarizes them per
variant: mean bits per byte over the seeds, and the spread (max - min).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "quality-sweep.jsonl"

# Each variant is the settings it changes from the defaults (the CLI's flag names, as
# `slm.train` keywords); "baseline" is `slm train` as it ships.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "adamw": {"optimizer": "adamw"},  # the default before Muon
    "muon": {"optimizer": "muon"},
    "muon lr 0.04": {"optimizer": "muon", "muon_lr": 0.04},
    "muon lr 0.01": {"optimizer": "muon", "muon_lr": 0.01},
    "adamw lr 3e-3": {"optimizer": "adamw", "lr": 3e-3},
    "adamw lr 1e-3": {"optimizer": "adamw", "lr": 1e-3},
    "batch 8": {"batch_size": 8},
    "batch 32": {"batch_size": 32},
    "no weight decay": {"weight_decay": 0.0},
    "min lr 0": {"min_lr_ratio": 0.0},
    "6 layers x 160": {"n_layers": 6, "d_model": 160, "n_heads": 5},
}


def run_one(name: str, seed: int, tokens: int, data: Path, work: Path) -> dict[str, Any]:
    import slm
    from slm.bench.suite import machine_info
    from slm.evaluate import evaluate_model

    run_dir = work / f"{name.replace(' ', '_')}-{seed}"
    start = time.perf_counter()
    result = slm.train(
        [str(data)],
        out=run_dir,
        seed=seed,
        max_tokens=tokens,
        sample_tokens=0,
        eval_every=10**9,  # one evaluation, at the end
        **VARIANTS[name],
    )
    wall_s = time.perf_counter() - start
    val = evaluate_model(run_dir, [], split="val")
    # Training speed as the median of the steps' own rates: a pause (another job, a stopped
    # process) stretches a few steps and the wall time, not the median.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "train_loss" in r and "tokens_per_s" in r]
    return {
        "variant": name,
        "settings": VARIANTS[name],
        "seed": seed,
        "tokens": result.tokens,
        "steps": result.step,
        "bpb": val.bpb,
        "wall_s": round(wall_s, 1),
        "tokens_per_s": round(statistics.median(rates)),
        "processor": machine_info()["processor"],
        "date": time.strftime("%Y-%m-%d"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(f"{row['variant']} @ {row['tokens'] / 1e6:.1f}M", []).append(row)
    lines = [
        "| change | tokens | seeds | val bpb (mean) | spread | tokens/s (median) |",
        "|---|---|---|---|---|---|",
    ]
    for runs in by_variant.values():
        bpbs = [r["bpb"] for r in runs]
        rates = [r["tokens_per_s"] for r in runs if r.get("tokens_per_s")] or [float("nan")]
        lines.append(
            f"| {runs[0]['variant']} | {runs[0]['tokens'] / 1e6:.1f} M | {len(runs)} "
            f"| {statistics.mean(bpbs):.4f} | {max(bpbs) - min(bpbs):.4f} "
            f"| {statistics.median(rates):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["baseline"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--tokens", type=float, default=5e6)
    parser.add_argument("--data", help="a prepared built-in corpus (default: prepared here)")
    parser.add_argument("--table", action="store_true", help="summarize the runs so far")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line]
        print(table(rows), end="")
        return 0
    import slm

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            slm.prepare([], data)
        for name in args.variants:
            for seed in args.seeds:
                row = run_one(name, seed, int(args.tokens), data, Path(tmp))
                print(json.dumps(row), flush=True)
                if row["tokens"] < args.tokens:  # stopped early (Ctrl-C, SIGTERM): no figure
                    return 130
                RESULTS.parent.mkdir(exist_ok=True)
                with RESULTS.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
