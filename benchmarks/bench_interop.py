"""slm, transformers and llama.cpp on the same model: `python benchmarks/bench_interop.py
[MODEL_DIR] [--rounds N] [--new-tokens N] [--threads 1 2]`.

A thin script over `slm.bench.interop`: export time and size per format, each consumer's max
logit difference from slm, and batch-1 greedy decode tokens/s on each thread count (every
engine on the same count), engines interleaved. With no MODEL_DIR it builds seed-2.5m with
random weights (speed does not depend on training; logit differences are more telling on a
trained model).
"""

from __future__ import annotations

import argparse
import json
import sys

from slm.bench.interop import interop_suite, markdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", help="model folder (default: random seed-2.5m)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = interop_suite(
        args.model_dir,
        rounds=args.rounds,
        new_tokens=args.new_tokens,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        threads=tuple(args.threads),
    )
    print(json.dumps(result, indent=2) if args.json else markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
