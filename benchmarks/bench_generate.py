"""Generation figures alone: `python benchmarks/bench_generate.py [--quick]`.

A thin script over `slm.bench.generation`; `python -m benchmarks` runs the whole suite.
"""

from __future__ import annotations

import sys

from slm.bench.generation import generate_suite


def main() -> int:
    result = generate_suite(quick="--quick" in sys.argv[1:])
    for row in result["rows"]:
        print(f"{row['what']:<64} {row['figure']}  (spread {row['spread']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
