"""Start a child with its standard error closed or SIGTERM blocked, without a
``preexec_fn``: that runs Python in a child forked from the multi-threaded test process
(grpc's threads), which the standard library warns may deadlock or die (seen: a child
killed by SIGABRT before its exec, once in ``make test``, after grpc's "Other threads are
currently calling into gRPC, skipping fork() handlers"). A small launcher process of its
own does it and then execs the command."""

from __future__ import annotations

import sys

__all__ = ["launched"]

_LAUNCHER = (
    "import os, signal, sys\n"
    "what, *argv = sys.argv[1:]\n"
    "for item in what.split(','):\n"
    "    if item == 'close-stderr':\n"
    "        os.close(2)\n"
    "    elif item == 'block-sigterm':\n"
    "        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "    elif item.startswith('deleted-cwd='):\n"
    "        gone = item.split('=', 1)[1]\n"
    "        os.chdir(gone)\n"
    "        os.rmdir(gone)\n"
    "os.execv(argv[0], argv)\n"
)


def launched(*argv: str, close_stderr: bool = False, block_sigterm: bool = False,
             deleted_cwd: str | None = None) -> list[str]:
    """The command line that runs ``argv`` (``argv[0]`` a path, e.g. ``sys.executable``)
    with its stderr closed (``prog 2>&-``), SIGTERM blocked in its signal mask (which
    survives exec, POSIX), and/or its working directory ``deleted_cwd`` (an empty
    directory, entered and then removed), as a launcher process does it before its
    exec."""
    what = [name for name, on in (("close-stderr", close_stderr),
                                  ("block-sigterm", block_sigterm)) if on]
    if deleted_cwd is not None:
        what.append(f"deleted-cwd={deleted_cwd}")
    return [sys.executable, "-c", _LAUNCHER, ",".join(what) or "-", *argv]
