"""``python -m benchmarks``: run the benchmark suite (see :mod:`benchmarks.runner`)."""

from __future__ import annotations

from benchmarks.runner import main

raise SystemExit(main(prog="python -m benchmarks"))
