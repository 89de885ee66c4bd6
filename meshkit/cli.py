"""The ``meshkit`` command.

* ``meshkit demo [...]``: run the example ecom stack on real processes (``--help``; from a
  source checkout, like ``bench``: an installed wheel lists neither and says how to get them).
* ``meshkit certs init|issue|inspect``: the mesh CA and workload certificates.
* ``meshkit bench [...]``: the benchmark suite (from a source checkout).
* ``meshkit services``, ``meshkit call``, ``meshkit prometheus-targets``: operating a
  running mesh (:mod:`meshkit._cli`, one module each).
* ``meshkit version`` or ``meshkit --version`` (no arguments: one is a usage error, status 2).
* ``meshkit help [COMMAND]``: the usage, or ``COMMAND --help``.

Every command ends quietly when the reader of its output goes away (``meshkit services |
head -1``): exit status 141 (128 + SIGPIPE, what a shell reports for a filter killed by
SIGPIPE), nothing on stderr. Ctrl-C (SIGINT) ends it with status 130 (128 + SIGINT) and
one line on stderr, no traceback. Started with stdout closed (``meshkit ... >&-``), a
command that has something to print fails with one line on stderr and status 1 (as
``ls >&-`` does); one with nothing for stdout (``prometheus-targets --out F``) runs as
usual. Started with stderr closed (``meshkit ... 2>&-``), a command runs as usual and what
it would say there is dropped (never printed on stdout instead).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from meshkit import __version__
from meshkit._cli._common import StdoutWriteError

__all__ = ["main"]

_OPS = {
    "services": ("meshkit._cli.services", "list services, instances, health and admin URLs"),
    "call": ("meshkit._cli.call", "one unary call with a JSON request (server reflection)"),
    "prometheus-targets": ("meshkit._cli.prometheus",
                           "write Prometheus file_sd targets from the registry"),
}
_CHECKOUT_ONLY = {
    "demo": ("examples.ecom.demo", "run the ecom example stack on real processes and report"),
    "bench": ("benchmarks.runner", "run the benchmark suite"),
}


def _checkout() -> Path | None:
    """The source checkout meshkit runs from (it has ``examples/``), or ``None`` for an
    installed wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "examples").is_dir() and (root / "pyproject.toml").is_file() \
        else None


def _usage() -> str:
    rows = [(name, help_) for name, (_, help_) in _OPS.items()]
    rows.append(("certs", "mesh CA and workload certificates: init, issue <service>, inspect"))
    in_checkout = _checkout() is not None
    if in_checkout:
        rows += [(name, help_) for name, (_, help_) in _CHECKOUT_ONLY.items()]
    rows.append(("version", "print the meshkit version"))
    names = ",".join(name for name, _ in rows)
    text = f"usage: meshkit {{{names}}} [args...]  (meshkit COMMAND --help)\n\n"
    text += "".join(f"  {name:<20}{help_}\n" for name, help_ in rows)
    if not in_checkout:
        text += ("\n  demo and bench run from a source checkout of meshkit (they need its "
                 "examples/ and\n  benchmarks/): git clone, then `make demo` or `make bench`.\n")
    return text


def _from_checkout(module: str, what: str) -> ModuleType:
    """Import ``module`` from the source checkout meshkit is installed from.

    Raises:
        SystemExit: meshkit is not installed from a checkout (the message says how to get
            one), or a package the command imports is not installed (``nats`` for the
            demo, with ``pip install -e .`` and no extras: the message names it and how
            to install the checkout's dependencies).
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        _missing_dependency(exc, top, what)
        checkout = _checkout()
        if checkout is None:
            raise SystemExit(
                f"meshkit {what} runs from a source checkout of meshkit (it needs its "
                f"{top}/ directory, which the package does not install): "
                f"git clone, then `make {what}`"
            ) from None
    sys.path.insert(0, str(checkout))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        _missing_dependency(exc, top, what)
        raise


def _missing_dependency(exc: ModuleNotFoundError, top: str, what: str) -> None:
    """Return when ``exc`` is ``top`` (``examples``, ``benchmarks``) itself missing, the
    checkout not on the path.

    Raises:
        SystemExit: ``exc`` names another package (one the command's modules import): it
            is not installed; the message names it and how to install what ``make
            {what}`` installs.
    """
    name = (exc.name or "").split(".")[0]
    if name in ("", top):
        return
    extra = "bench" if what == "bench" else "dev"
    raise SystemExit(
        f"meshkit {what} needs the Python package {name!r}, which is not installed: "
        f"from the checkout, pip install -e '.[{extra}]' (what `make {what}` installs)"
    ) from None


_EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE
_EXIT_INTERRUPTED = 128 + 2  # SIGINT
_EXIT_FAILED = 1


class _StdoutClosedError(StdoutWriteError):
    """A command wrote to stdout, and the process started with file descriptor 1 closed
    (``errno`` ``EBADF``). A :class:`~meshkit._cli._common.StdoutWriteError`, so a
    command's own ``OSError`` handling re-raises it as it does a failed write (``meshkit
    certs`` printed it as an unreadable file's: ``[Errno 9] stdout is closed ...``)."""


class _ClosedStdout(io.TextIOBase):
    """``sys.stdout`` while a command runs with file descriptor 1 closed (Python sets
    ``sys.stdout`` to ``None`` then, and ``print`` drops what it is given): writing
    anything raises :class:`_StdoutClosedError`, so the output is not lost silently."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if s:
            raise _StdoutClosedError(errno.EBADF, "stdout is closed, the output cannot be "
                                                 "written")
        return 0


class _GuardedStdout:
    """``sys.stdout`` while a command runs: what it writes and flushes goes to ``stream``
    (the real stdout), an ``OSError`` other than a broken pipe raised as
    :class:`~meshkit._cli._common.StdoutWriteError` (``ENOSPC`` of ``meshkit ... >
    file`` on a full disk), which :func:`main` ends the command with; anything else
    (``fileno``, ``isatty``, ``encoding``, ``buffer``) is ``stream``'s.

    The first error raised is kept in :attr:`failed`, for :func:`main` to end a
    command that claims success with even when the code that wrote swallowed it
    (:func:`_output_lost`): argparse's usage and
    ``--help`` (``_print_message`` ignores an ``OSError``), which otherwise ended with
    status 0 and nothing said into a closed pipe or a closed stdout."""

    def __init__(self, stream: Any, outer: Any = None) -> None:
        self._stream = stream
        self.failed: OSError | None = None
        self.outer = outer  # the sys.stdout main() found (None too), put back after
        self.ended = False  # its main() has returned

    def write(self, s: str) -> int:
        try:
            written: int = self._stream.write(s)
        except OSError as exc:
            raise self._failure(exc) from None
        return written

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: OSError) -> OSError:
        """``exc`` as :func:`main` ends the command with (a broken pipe and a closed
        stdout as they are, another error as ``StdoutWriteError``), kept in
        :attr:`failed` if it is the first."""
        if not isinstance(exc, (BrokenPipeError, _StdoutClosedError)):
            exc = _write_error(exc)
        if self.failed is None:
            self.failed = exc
        return exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_escaping_lock = threading.Lock()
_escaping: dict[int, tuple[Any, str, int]] = {}
"""Streams :func:`_escape_unencodable` reconfigured, by ``id``: (the stream, the error
handler it had, how many :func:`main` calls under way use it)."""


def _escape_unencodable(stream: Any) -> Any:
    """Make ``stream`` (stdout) write what its encoding cannot encode escaped, as
    ``backslashreplace`` writes it (``\\xe9``: stderr's own handler), instead of raising
    ``UnicodeEncodeError`` (an ``é`` in an instance id or a path on an ASCII or Latin-1
    stdout ended the command in a traceback, after its work was done); returns the
    stream to give :func:`_restore_handler` when the command ends, or ``None`` when it
    cannot be reconfigured (``StringIO``, a closed stream).

    Counted: calls of :func:`main` overlapping in threads share the change, and the
    handler the stream had is restored when the last of them ends (each saving and
    restoring its own restored ``strict`` under a call still running, and left
    ``backslashreplace`` behind)."""
    while isinstance(stream, _GuardedStdout):  # main() called within main()
        stream = stream._stream
    with _escaping_lock:
        held = _escaping.get(id(stream))
        if held is not None and held[0] is stream:
            _escaping[id(stream)] = (stream, held[1], held[2] + 1)
            return stream
        reconfigure = getattr(stream, "reconfigure", None)
        errors = getattr(stream, "errors", None)
        if reconfigure is None or not isinstance(errors, str):
            return None
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError, TypeError):  # closed, or not a text stream that takes it
            return None
        _escaping[id(stream)] = (stream, errors, 1)
        return stream


def _restore_handler(stream: Any) -> None:
    """End one use of ``stream`` (from :func:`_escape_unencodable`); the last restores
    the error handler it had (nothing raised: a stream closed meanwhile)."""
    with _escaping_lock:
        held = _escaping.get(id(stream))
        if held is None or held[0] is not stream:
            return
        if held[2] > 1:
            _escaping[id(stream)] = (stream, held[1], held[2] - 1)
            return
        del _escaping[id(stream)]
        with contextlib.suppress(Exception):
            stream.reconfigure(errors=held[1])


def _write_error(exc: OSError) -> OSError:
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return StdoutWriteError(exc.errno, f"stdout cannot be written: {reason}")


class _NoStderr(io.TextIOBase):
    """``sys.stderr`` while a command runs with file descriptor 2 closed (``meshkit ...
    2>&-``; Python sets ``sys.stderr`` to ``None`` then): what is written to it is
    dropped. Left ``None``, ``print(..., file=sys.stderr)`` would print on stdout (its
    fallback for ``file=None``), into the command's output."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return len(s)


def main(argv: list[str] | None = None) -> int:
    """Run the ``meshkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the
    process exit code: 2 for a usage error (no command or an unknown one, an argument to
    ``version``: the usage on stderr), 141 when stdout's reader went away (nothing
    printed), 130 after Ctrl-C (one line on stderr), 1 when there is output and stdout
    is closed or cannot be written (a full disk: one line on stderr, never a
    traceback), else the command's own.

    Raises:
        SystemExit: a command ended with a message (argparse, a refused run); its status.
    """
    stdout = sys.stdout  # None: started with file descriptor 1 closed
    escaped = _escape_unencodable(stdout)
    guarded = _GuardedStdout(_ClosedStdout() if stdout is None else stdout, stdout)
    sys.stdout = guarded
    no_stderr = sys.stderr is None
    if no_stderr:
        sys.stderr = _NoStderr()
    try:
        try:
            code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as exc:  # --help, a usage error
            _output_lost(guarded, exc.code)
            raise
        finally:  # also after SystemExit (--help): a broken pipe shows here, not at exit
            sys.stdout.flush()
        _output_lost(guarded, code)
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return _EXIT_BROKEN_PIPE
    except _StdoutClosedError as exc:
        print(f"meshkit: {exc.strerror}", file=sys.stderr)
        return _EXIT_FAILED
    except StdoutWriteError as exc:  # what is still buffered is dropped: exit flushes it
        _stdout_to_devnull()
        print(f"meshkit: {exc.strerror}", file=sys.stderr)
        return _EXIT_FAILED
    except KeyboardInterrupt:
        print("meshkit: interrupted", file=sys.stderr)
        return _EXIT_INTERRUPTED
    finally:
        # as the interpreter had it (None too), unless a call that overlapped this one
        # (another thread's) put its own on top: that one puts back past this, ended
        guarded.ended = True
        on_top = sys.stdout
        if not (isinstance(on_top, _GuardedStdout) and on_top is not guarded
                and not on_top.ended):
            outer = stdout
            while isinstance(outer, _GuardedStdout) and outer.ended:
                outer = outer.outer
            sys.stdout = outer
        if escaped is not None:
            _restore_handler(escaped)
        if no_stderr:
            sys.stderr = None


def _output_lost(guarded: _GuardedStdout, code: object) -> None:
    """Return unless the command ends with success (``code`` 0 or ``None``) while a write
    to stdout failed and its writer swallowed the error (argparse's ``--help`` into a
    closed pipe).

    Raises:
        OSError: that error, for :func:`main` to end the command with (141, or 1 and one
            line). A command that failed has said so itself (``certs`` prints the error).
    """
    if guarded.failed is not None and code in (0, None):
        raise guarded.failed


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at ``os.devnull``, so the interpreter's flush of what
    is still buffered at exit does not fail again (Python's recipe for SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _dispatch(args: list[str]) -> int:
    if not args:  # a usage error: the usage on stderr, as argparse's, stdout left empty
        print(_usage(), end="", file=sys.stderr)
        return 2
    if args[0] == "help" and args[1:2] not in ([], ["-h"], ["--help"]):
        args = [args[1], "--help"]  # help COMMAND: its own usage (an unknown one: 2)
    if args[0] in ("-h", "--help", "help"):  # asked for: the output
        print(_usage(), end="")
        return 0
    command, rest = args[0], args[1:]
    if command in ("version", "--version"):  # --version: what most tools answer
        return _version(rest)
    if command == "certs":
        from meshkit.auth import cli as certs_cli

        return certs_cli.main(rest)
    if command in _OPS:
        code: int = importlib.import_module(_OPS[command][0]).main(rest)
        return code
    if command in _CHECKOUT_ONLY:
        from meshkit._cli._common import quiet_grpc_core

        quiet_grpc_core()  # before the module (the demo's client) loads grpc
        ran: int = _from_checkout(_CHECKOUT_ONLY[command][0], command).main(rest)
        return ran
    print(f"meshkit: unknown command {command!r}\n\n{_usage()}", end="", file=sys.stderr)
    return 2


_VERSION_USAGE = "usage: meshkit version  (prints the meshkit version; no arguments)\n"


def _version(rest: list[str]) -> int:
    """``meshkit version``: the version on stdout (0); ``-h``/``--help`` alone, the usage
    on stdout (0); any other argument, the usage and it on stderr (2), never ignored."""
    if not rest:
        print(__version__)
        return 0
    if rest in (["-h"], ["--help"]):
        print(_VERSION_USAGE, end="")
        return 0
    print(f"{_VERSION_USAGE}meshkit version: unexpected argument {rest[0]!r}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
