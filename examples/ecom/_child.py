"""Signalling a child process of this one without reaping it and without a stranger's risk.

Shared by the demo (:mod:`examples.ecom.demo`) and the benchmark harness
(:mod:`benchmarks.procs`), whose children asyncio's child watcher reaps.
"""

from __future__ import annotations

import contextlib
import os
import signal

__all__ = ["signal_child"]

_UNREAPED = os.WEXITED | os.WNOHANG | os.WNOWAIT if hasattr(os, "WNOWAIT") else 0


def signal_child(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the child process ``pid`` only while it runs and is not reaped.

    Args:
        pid: a child of this process, started by asyncio (whose child watcher reaps it).
        sig: the signal to send.

    Returns:
        Whether the signal was sent: ``False`` when the child has exited (a zombie
        not read yet: a signal would do nothing), was reaped already, or no process
        has ``pid``. Raises nothing for those; other ``OSError`` s propagate.

    Neither ``Popen.send_signal`` (its ``poll()``, ``waitpid(WNOHANG)``, reaps a child
    that exited before asyncio's watcher read it: the watcher then reports 255) nor a
    bare ``os.kill`` on ``Process.returncode is None``: the watcher reaps the child
    (the threaded watcher in its thread, the pidfd one in a loop callback) before the
    loop runs the callback that sets ``returncode``, and in that window the pid may
    already be another process's, which ``os.kill`` would signal. Here the pid is
    pinned by a pidfd (Linux >= 5.3, ``pidfd_open(2)``) and checked to be still an
    unreaped child of ours with ``waitid(P_PIDFD, WNOWAIT)`` (reaps nothing; ``ECHILD``
    for a process that is not our child), then signalled through the same pidfd
    (``pidfd_send_signal(2)``): the process checked is the process signalled. Without
    pidfds (other systems, older kernels, a seccomp filter), ``waitid(P_PID,
    WNOWAIT)`` checks the pid is still our unreaped child just before ``os.kill``
    (as ``Popen.send_signal`` narrows the same race), or, without ``waitid``, a bare
    ``os.kill``.
    """
    if hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD") and _UNREAPED:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False  # reaped, and no process took the pid
        except OSError:
            pass  # no pidfd here (ENOSYS, EPERM of a seccomp filter): the pid checks
        else:
            try:
                if os.waitid(os.P_PIDFD, fd, _UNREAPED) is not None:
                    return False  # exited, not read yet
                signal.pidfd_send_signal(fd, sig)
                return True
            except (ChildProcessError, ProcessLookupError):
                return False  # not our child (reaped; the pid another's), or gone
            except OSError:
                pass  # waitid(P_PIDFD) unsupported (EINVAL before Linux 5.4)
            finally:
                os.close(fd)
    if hasattr(os, "waitid") and _UNREAPED:
        try:
            if os.waitid(os.P_PID, pid, _UNREAPED) is not None:
                return False
        except ChildProcessError:
            return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False
