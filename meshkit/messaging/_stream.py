"""Stream set-up: create a JetStream stream, or update it to the wanted subjects."""

from __future__ import annotations

from collections.abc import Sequence

import nats.js.errors
from nats.js.api import StreamConfig, StreamInfo
from nats.js.client import JetStreamContext

from meshkit.errors import ConfigError

__all__ = ["ensure_stream"]

#: JetStream's default duplicate window when the stream keeps messages longer, seconds.
_DEFAULT_DUPLICATE_WINDOW_S = 120.0


async def ensure_stream(js: JetStreamContext, name: str, subjects: Sequence[str], *,
                        duplicate_window_s: float | None = None,
                        max_age_s: float | None = None) -> StreamInfo:
    """Create stream ``name`` capturing ``subjects`` (file storage), or update an existing
    one to them; safe when several processes start at once.

    Args:
        js: a ``nats`` JetStream context.
        name: the stream name.
        subjects: subjects (wildcards allowed) the stream captures.
        duplicate_window_s: how long JetStream remembers ``Nats-Msg-Id`` values to drop
            repeats, seconds (default ``None``: 120 s, or ``max_age_s`` if shorter, as
            JetStream's own default, "2 minutes or max age if shorter"; NATS docs,
            JetStream streams, ``Duplicates``); an outbox relay that restarts later than
            this republishes events the consumer must drop itself. JetStream refuses a
            window longer than ``max_age_s`` (error 10052).
        max_age_s: drop messages older than this, seconds (default ``None``: keep).

    Raises:
        ConfigError: no subjects, a window or ``max_age_s`` <= 0, or a window longer
            than ``max_age_s`` (values quoted); the NATS error if JetStream refuses.
    """
    if not subjects:
        raise ConfigError(f"stream {name!r} needs at least one subject")
    if max_age_s is not None and not max_age_s > 0:
        raise ConfigError(f"max_age_s must be > 0, got {max_age_s!r}")
    if duplicate_window_s is None:
        duplicate_window_s = _DEFAULT_DUPLICATE_WINDOW_S if max_age_s is None \
            else min(_DEFAULT_DUPLICATE_WINDOW_S, max_age_s)
    if not duplicate_window_s > 0:
        raise ConfigError(f"duplicate_window_s must be > 0, got {duplicate_window_s!r}")
    if max_age_s is not None and duplicate_window_s > max_age_s:
        raise ConfigError(f"duplicate_window_s must not exceed max_age_s ({max_age_s!r}), "
                          f"got {duplicate_window_s!r}")
    config = StreamConfig(name=name, subjects=list(subjects),
                          duplicate_window=duplicate_window_s, max_age=max_age_s)
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError:  # exists with another config: bring it in line
        return await js.update_stream(config)
