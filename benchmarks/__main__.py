"""`python -m benchmarks [--quick] [--quality [BUDGET]]`: the benchmark suite.

The same as `slm bench`; results go to benchmarks/results/<machine>.json and .md.
"""

from __future__ import annotations

import sys

from slm.cli.main import main

sys.exit(main(["bench", *sys.argv[1:]]))
