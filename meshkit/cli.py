"""The ``meshkit`` command.

* ``meshkit demo [...]``: run the example ecom stack on real processes (``--help``).
* ``meshkit certs init|issue|inspect``: the mesh CA and workload certificates.
* ``meshkit bench [...]``: the benchmark suite (from a source checkout).
* ``meshkit version``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from meshkit import __version__

__all__ = ["main"]

_USAGE = """usage: meshkit {demo,certs,bench,version} [args...]

  demo      run the ecom example stack on real processes and report (meshkit demo --help)
  certs     mesh CA and workload certificates: init, issue <service>, inspect <file>
  bench     run the benchmark suite (meshkit bench --help)
  version   print the meshkit version
"""


def _from_checkout(module: str, what: str) -> ModuleType:
    """Import ``module`` from the source checkout meshkit is installed from."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / module.split(".")[0]).is_dir():
            raise SystemExit(
                f"meshkit {what} runs from a source checkout (git clone, then `make {what}`)"
            ) from None
        sys.path.insert(0, str(checkout))
        return importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    """Run the ``meshkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the
    process exit code (2 for a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "version":
        print(__version__)
        return 0
    if command == "certs":
        from meshkit.auth import cli as certs_cli

        return certs_cli.main(rest)
    if command == "demo":
        code: int = _from_checkout("examples.ecom.demo", "demo").main(rest)
        return code
    if command == "bench":
        bench: int = _from_checkout("benchmarks.runner", "bench").main(rest)
        return bench
    print(f"meshkit: unknown command {command!r}\n\n{_USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
