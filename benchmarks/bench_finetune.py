"""Fine-tuning defaults, measured: `python benchmarks/bench_finetune.py [--steps N]`.

A tiny base model is trained on the built-in Shakespeare corpus (text A), then fine-tuned on
Python's own reference documentation (text B: `pydoc_data.topics`, shipped with every
Python) with several peak learning rates and weight decays, each for the same steps. For each
it reports bits per byte on B's validation split (what fine-tuning gains) and on A's (what it
forgets). Results go to benchmarks/results/finetune.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import slm

CANDIDATES = [  # (lr, weight_decay, warmup_steps)
    (2e-3, 0.1, 100),  # the from-scratch defaults
    (2e-3, 0.0, 20),
    (1e-3, 0.0, 20),
    (3e-4, 0.0, 20),
    (3e-4, 0.1, 20),
    (1e-4, 0.0, 20),
]
FAST = {"device": "cpu", "dtype": "float32", "compile": "off", "sample_tokens": 0}


def text_b(folder: Path) -> Path:
    from pydoc_data.topics import topics

    path = folder / "python_docs.txt"
    path.write_text("\n\n".join(topics.values()), encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    base = slm.train(out=tmp / "base", preset="tiny", max_steps=args.base_steps, **FAST).run_dir
    data_a = base / "data"
    data_b = tmp / "data_b"
    slm.prepare([text_b(tmp)], data_b, tokenizer_path=str(base / "tokenizer.json"))
    before = slm.load(base)
    rows = [("base (no fine-tune)", _bpb(before, data_b), _bpb(before, data_a), 0.0)]
    for lr, wd, warmup in CANDIDATES:
        start = time.perf_counter()
        run = slm.train(
            data_b,
            init_from=base,
            out=tmp / f"ft-{lr}-{wd}",
            max_steps=args.steps,
            lr=lr,
            weight_decay=wd,
            warmup_steps=warmup,
            **FAST,
        ).run_dir
        model = slm.load(run)
        label = f"lr {lr:g}, weight decay {wd:g}, warmup {warmup}"
        rows.append((label, _bpb(model, data_b), _bpb(model, data_a), time.perf_counter() - start))
    lines = [
        f"Tiny base ({args.base_steps} steps on Shakespeare), fine-tuned {args.steps} steps on "
        "Python's reference docs; bits per byte on each validation split.",
        "",
        "| fine-tune | B (new text) bpb | A (Shakespeare) bpb | time |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.0f} s |" for r in rows]
    out = Path(__file__).parent / "results" / "finetune.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def _bpb(model: slm.api.LoadedModel, data: Path) -> float:
    from slm.data.prepared import load_prepared
    from slm.evaluate import evaluate_windows, plan_windows, token_byte_lengths

    tokens = load_prepared(data).tokens("val")[:200_000]
    windows = plan_windows(len(tokens), model.config.context_len)
    lengths = token_byte_lengths(model.tokenizer)
    return evaluate_windows(model.model, tokens, windows, lengths).bpb


if __name__ == "__main__":
    sys.exit(main())
