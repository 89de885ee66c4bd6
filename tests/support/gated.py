"""A lock that holds one thread back before its first take: a race window held open."""

from __future__ import annotations

import threading
from types import TracebackType


class GatedLock:
    """A drop-in for a registry's ``threading.Lock`` (``_loops_mutex`` of EtcdRegistry,
    ``_clients_lock`` of ConsulRegistry) whose first take by thread ``gated`` waits
    before taking it (up to 10 s) until the test sets :attr:`resume`; :attr:`paused` is
    set once that thread waits. So the window between a closed check and the lock is
    held open while another thread runs ``close()``."""

    def __init__(self, gated: threading.Thread) -> None:
        self._lock = threading.Lock()
        self._gated = gated
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __enter__(self) -> bool:
        if threading.current_thread() is self._gated and not self.paused.is_set():
            self.paused.set()
            self.resume.wait(10)
        return self._lock.acquire(timeout=10)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()
