"""The serving load test alone: `python benchmarks/bench_serve.py [MODEL_DIR] [--quick]`.

A thin script over `slm.bench.serving`: 16 concurrent clients x 10 requests against the same
160 requests one at a time, on `slm serve` over loopback. No MODEL_DIR: seed-2.5m with random
weights. --quick: 4 clients x 3 requests (a smoke test).
"""

from __future__ import annotations

import json
import sys

from slm.bench.serving import serving_suite


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--quick"]
    size = {"clients": 4, "requests_per_client": 3} if "--quick" in sys.argv else {}
    result = serving_suite(args[0] if args else None, **size)
    for row in result["rows"]:
        print(f"{row['what']}: {row['figure']}")
    print(f"concurrent / one at a time: {result['speedup']:.2f}x tokens/s")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
