"""Stream set-up: create a JetStream stream, or update it to the wanted subjects."""

from __future__ import annotations

from collections.abc import Sequence

import nats.js.errors
from nats.js.api import StreamConfig, StreamInfo
from nats.js.client import JetStreamContext

from meshkit.errors import ConfigError

__all__ = ["ensure_stream"]


async def ensure_stream(js: JetStreamContext, name: str, subjects: Sequence[str], *,
                        duplicate_window_s: float = 120.0,
                        max_age_s: float | None = None) -> StreamInfo:
    """Create stream ``name`` capturing ``subjects`` (file storage), or update an existing
    one to them; safe when several processes start at once.

    Args:
        js: a ``nats`` JetStream context.
        name: the stream name.
        subjects: subjects (wildcards allowed) the stream captures.
        duplicate_window_s: how long JetStream remembers ``Nats-Msg-Id`` values to drop
            repeats (default 120 s; JetStream's default); an outbox relay that restarts
            later than this republishes events the consumer must drop itself.
        max_age_s: drop messages older than this (default ``None``: keep).

    Raises:
        ConfigError: no subjects or a window <= 0; the NATS error if JetStream refuses.
    """
    if not subjects:
        raise ConfigError(f"stream {name!r} needs at least one subject")
    if not duplicate_window_s > 0:
        raise ConfigError(f"duplicate_window_s must be > 0, got {duplicate_window_s!r}")
    config = StreamConfig(name=name, subjects=list(subjects),
                          duplicate_window=duplicate_window_s, max_age=max_age_s)
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # exists with another config: bring it in line
        return await js.update_stream(config)
