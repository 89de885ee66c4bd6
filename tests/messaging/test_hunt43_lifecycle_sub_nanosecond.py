"""A duration JetStream would carry as 0 ns is refused, not turned into its opposite.

nats-py sends a stream's ``max_age`` and ``duplicate_window`` and a consumer's
``ack_wait`` as ``int(seconds * 1e9)``: a positive value below one nanosecond (``5e-10``,
a unit slip) passed :func:`meshkit.messaging._stream.check_duration_s` (> 0) and went out
as 0, which JetStream reads as its default: ``max_age`` 0 is "keep for ever", an
``ack_wait`` of 0 the server's 30 s. ``ensure_stream(max_age_s=5e-10)`` made a stream
that never drops a message. Such a value is refused now (ConfigError, quoted): JetStream
durations are whole nanoseconds. Real JetStream on 127.0.0.1:4222.
"""

from __future__ import annotations

import contextlib
import uuid

import nats.js.errors
import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions, ensure_stream
from tests.messaging.conftest import Bus


async def test_a_sub_nanosecond_max_age_is_refused(bus: Bus) -> None:
    name = f"H43NS_{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ConfigError, match=r"max_age_s.*5e-10"):
            await ensure_stream(bus.js, name, [f"{name.lower()}.>"], max_age_s=5e-10,
                                duplicate_window_s=1e-10)
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await bus.js.stream_info(name)
            await bus.js.delete_stream(name)
            pytest.fail(f"the stream was made with max_age {info.config.max_age!r}")


def test_a_sub_nanosecond_ack_wait_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ack_wait_s.*5e-10"):
        ConsumerOptions(stream="S", durable="d", ack_wait_s=5e-10)


def test_one_nanosecond_is_taken() -> None:
    assert ConsumerOptions(stream="S", durable="d", ack_wait_s=1e-9).ack_wait_s == 1e-9
