"""A signal a process asks to handle reaches it, whatever signal mask it inherited.

The signal mask survives ``fork`` and ``exec`` (POSIX: a child "shall inherit a copy of
the parent's signal mask" and ``execve`` preserves it). A launcher that blocks signals to
``sigwait()`` for them in one thread, then starts children from another without
restoring the mask, hands them SIGTERM blocked: installing a handler
(``loop.add_signal_handler``, ``signal.signal``) leaves the mask as it is, so the signal
stays pending for ever and ``kill <pid>`` (every orchestrator's stop) does nothing. Go's
``signal.Notify`` unblocks the signals it is asked for (the runtime's ``ensureSigM``:
``sigdelset(&sigBlocked, sig)`` on its signal thread); :func:`unblock_signals` does the
same for the signals meshkit handles, right after installing their handlers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

__all__ = ["unblock_signals"]


def unblock_signals(signals: Iterable[signal.Signals]) -> None:
    """Remove ``signals`` from the calling thread's signal mask
    (``pthread_sigmask(SIG_UNBLOCK, ...)``), so the handlers just installed for them run.
    Call it from the thread that installed them (asyncio's ``add_signal_handler`` wants
    the main thread); threads started earlier keep their mask, and a process-directed
    signal goes to a thread that does not block it. Nothing on a platform without
    ``pthread_sigmask`` (Windows, which has no signal mask)."""
    sigmask = getattr(signal, "pthread_sigmask", None)
    if sigmask is not None:
        sigmask(signal.SIG_UNBLOCK, set(signals))
