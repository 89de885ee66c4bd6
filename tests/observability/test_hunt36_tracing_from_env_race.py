"""``tracing_from_env`` run at once from two threads (two channels' first calls on two
event loops, or ``serve()`` and a channel of another thread) sets one provider up: before,
both saw no SDK provider installed and each built one; the second could not be installed
(the API logs "Overriding of current TracerProvider is not allowed") and was left with
its batch processor's thread running, yet it was the one remembered as the provider to
name, so a later ``serve("orderd")`` left the installed one ``unknown_service``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from meshkit.observability import _tracing


def test_two_threads_set_one_provider_up(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED",
              "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(tmp_path / "spans.jsonl"))
    slot: list[Any] = []  # the process's global provider, as the API keeps it: set once
    proxy = trace.ProxyTracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: slot[0] if slot else proxy)
    monkeypatch.setattr(trace, "set_tracer_provider",
                        lambda p: None if slot else slot.append(p))
    monkeypatch.setattr(_tracing, "_unnamed", [])
    real = _tracing.configure_tracing

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.1)  # the SDK's resource detectors and entry points take time too
        return real(*args, **kwargs)

    monkeypatch.setattr(_tracing, "configure_tracing", slow)
    barrier = threading.Barrier(2)
    made: list[Any] = []

    def first_call() -> None:
        barrier.wait(5)
        made.append(_tracing.tracing_from_env(None))

    threads = [threading.Thread(target=first_call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    built = [p for p in made if p is not None]
    try:
        assert len(made) == 2 and built == slot, (made, slot)
        _tracing.tracing_from_env("orderd")  # serve() names the installed one
        assert slot[0].resource.attributes["service.name"] == "orderd"
    finally:
        for p in built:
            p.shutdown()
