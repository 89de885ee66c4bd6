"""meshkit's benchmark suite: what each layer costs, and how the balancer behaves.

Run it from the repository root::

    python -m benchmarks --quick          # about a minute: every scenario, short rounds
    python -m benchmarks                  # the full run, a few minutes
    python -m benchmarks --plot           # also PNG charts in benchmarks/results/

Every contender of a scenario runs in the same invocation, interleaved round by round
(A B C, C B A, ...), and the tables report medians over rounds and the ratio to the
scenario's baseline. Servers and load-generating clients are separate processes on
loopback, so CPU and memory come from the OS per process. Results go to
``benchmarks/results/<timestamp>.json``.

Modules: :mod:`benchmarks.runner` (command line, entry point ``main(argv)``),
:mod:`benchmarks.stacks` (the table of layers: name -> ServeOptions/DialOptions),
:mod:`benchmarks.procs` (worker processes), :mod:`benchmarks.scenarios` (the six
scenarios), :mod:`benchmarks.report` (tables, targets, charts).
"""

from __future__ import annotations

__all__: list[str] = []
