"""Stream set-up: create a JetStream stream, or update it to the wanted subjects."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import nats.js.errors
from nats.js.api import StreamConfig, StreamInfo
from nats.js.client import JetStreamContext

from meshkit._config import check_number, check_strings
from meshkit.errors import ConfigError

__all__ = ["ensure_stream"]

#: JetStream's error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058

#: JetStream's default duplicate window when the stream keeps messages longer, seconds.
_DEFAULT_DUPLICATE_WINDOW_S = 120.0

MAX_DURATION_S = (2**63 - 1) // 10**9
"""The longest duration JetStream takes, whole seconds (9223372036, about 292 years): its
durations (a stream's ``max_age`` and ``duplicate_window``, a consumer's ``ack_wait``, a
pull request's ``expires``) are Go ``time.Duration`` values, int64 nanoseconds, which
nats-py sends as ``int(seconds * 1e9)``. Infinity raises ``OverflowError`` in nats-py and
a longer one is refused by the server (``cannot unmarshal ... of type time.Duration``)."""


#: The longest stream or consumer name JetStream takes, bytes.
_MAX_NAME_BYTES = 255


def check_nats_name(name: str, value: object) -> None:
    """Check that ``value`` (the field ``name``) is a JetStream stream or consumer name:
    a non-empty string of printable characters without spaces, dots, wildcards or path
    separators (NATS' naming rules: "Spaces, tabs, period (.), greater than (>) or
    asterisk (*) are prohibited. Path separators ... are prohibited"; a name is part of
    the API's subjects and of the server's storage paths), of at most 255 bytes
    (nats-server: "stream name is too long, maximum allowed is 255", the same for a
    consumer's; about 4,000 would also push the API request's protocol line past the
    server's ``max_control_line``, which closes the connection).

    Raises:
        ConfigError: any other value; ``name`` and the value quoted (a long one cut).
    """
    if (not isinstance(value, str) or not value or not value.isprintable()
            or any(c in value for c in " .*>/\\")):
        raise ConfigError(f"{name} must be a non-empty NATS name of printable characters "
                          f"without spaces, dots, wildcards or slashes, got {value!r:.300}")
    if len(value.encode()) > _MAX_NAME_BYTES:
        raise ConfigError(f"{name} must be at most {_MAX_NAME_BYTES} bytes (JetStream's "
                          f"limit), got {len(value.encode())}: {value[:64]!r}...")


def check_jetstream(js: object) -> None:
    """Check that ``js`` is a JetStream context (``nc.jetstream()``), not the connection
    ``nc`` itself or anything else: given ``nc``, a publisher, consumer or stream set-up
    failed only when used, with an ``AttributeError`` (and a consumer's ``run()``
    retried that for ever).

    Raises:
        ConfigError: anything else (its type named).
    """
    if not isinstance(js, JetStreamContext):
        raise ConfigError("expected a JetStream context: pass nc.jetstream(), not the "
                          f"connection; got a {type(js).__name__}")


_MIN_DURATION_S = 1e-9
"""The shortest duration JetStream can carry, one nanosecond: nats-py sends
``int(seconds * 1e9)``, so a shorter positive one went out as 0, which JetStream reads as
its default (a stream's ``max_age`` 0: keep for ever; ``ack_wait`` 0: 30 s)."""


def check_duration_s(name: str, value: object) -> None:
    """Check that ``value`` (the field ``name``) is a number of seconds JetStream can carry:
    at least one nanosecond (:data:`_MIN_DURATION_S`; a positive value below it would be
    sent as 0, JetStream's "default": for ``max_age`` no limit at all) and at most
    :data:`MAX_DURATION_S` (so finite).

    Raises:
        ConfigError: any other value; ``name`` and the value quoted.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and 0 < value < _MIN_DURATION_S:
        raise ConfigError(f"{name} must be at least one nanosecond (1e-09 s: JetStream's "
                          f"durations are whole nanoseconds, and 0 means its default), "
                          f"got {value!r}")
    check_number(name, value, low=0.0, low_open=True, high=MAX_DURATION_S)


async def ensure_stream(js: JetStreamContext, name: str, subjects: Sequence[str], *,
                        duplicate_window_s: float | None = None,
                        max_age_s: float | None = None) -> StreamInfo:
    """Create stream ``name`` capturing ``subjects`` (file storage), or update an existing
    one to them; safe when several processes start at once.

    An existing stream keeps every setting not named here (limits such as ``max_bytes``,
    ``max_msgs``, ``max_msgs_per_subject``, ``num_replicas``, storage, description...,
    e.g. set by an operator): only its subjects, duplicate window and max age are made
    the ones asked for (read with ``stream_info``, then ``update_stream`` if they
    differ). ``None`` for ``max_age_s`` means "keep messages" here too: an existing
    stream's max age is then removed.

    Args:
        js: a ``nats`` JetStream context.
        name: the stream name.
        subjects: subjects (wildcards allowed) the stream captures, a collection of
            strings (a list or tuple; one string is refused, not split into characters).
        duplicate_window_s: how long JetStream remembers ``Nats-Msg-Id`` values to drop
            repeats, seconds (default ``None``: 120 s, or ``max_age_s`` if shorter, as
            JetStream's own default, "2 minutes or max age if shorter"; NATS docs,
            JetStream streams, ``Duplicates``); an outbox relay that restarts later than
            this republishes events the consumer must drop itself. JetStream refuses a
            window longer than ``max_age_s`` (error 10052).
        max_age_s: drop messages older than this, seconds (default ``None``: keep).

    Both are at most 9223372036 s, about 292 years (JetStream's durations are int64
    nanoseconds); infinity is refused (``None`` is how ``max_age_s`` says "keep").

    Raises:
        ConfigError: ``js`` is no JetStream context (e.g. the connection ``nc``: pass
            ``nc.jetstream()``), a ``name`` JetStream cannot take (see
            :func:`check_nats_name`: empty, a space, dot, wildcard or slash, over 255
            bytes), no subjects, ``subjects`` one string (or bytes) or holding
            something else than strings, a window or ``max_age_s`` <= 0, infinite or
            longer than 9223372036 s, or a window longer than ``max_age_s`` (values
            quoted);
        nats.js.errors.APIError: JetStream refused the stream or the update, as JetStream
            said it (e.g. ``BadRequestError`` 10065, subjects overlapping another
            stream's; only 10058, the name in use with another config, leads to the
            update); other ``nats.errors.Error`` for the connection.
    """
    check_jetstream(js)
    check_nats_name("name", name)
    # one string would be taken character by character: a stream capturing "s", "h"...
    wanted = list(check_strings("subjects", subjects))
    if not wanted:
        raise ConfigError(f"stream {name!r} needs at least one subject")
    if max_age_s is not None:
        check_duration_s("max_age_s", max_age_s)
    if duplicate_window_s is None:
        duplicate_window_s = _DEFAULT_DUPLICATE_WINDOW_S if max_age_s is None \
            else min(_DEFAULT_DUPLICATE_WINDOW_S, max_age_s)
    check_duration_s("duplicate_window_s", duplicate_window_s)
    if max_age_s is not None and duplicate_window_s > max_age_s:
        raise ConfigError(f"duplicate_window_s must not exceed max_age_s ({max_age_s!r}), "
                          f"got {duplicate_window_s!r}")
    try:
        return await js.add_stream(StreamConfig(
            name=name, subjects=wanted, duplicate_window=duplicate_window_s,
            max_age=max_age_s))
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    # exists with another config: change what was asked for, keep the rest
    info = await js.stream_info(name)
    current = info.config
    if (current.subjects, current.duplicate_window, current.max_age or None) == \
            (wanted, duplicate_window_s, max_age_s):
        return info  # it differs only in what the caller left alone
    return await js.update_stream(dataclasses.replace(
        current, subjects=wanted, duplicate_window=duplicate_window_s, max_age=max_age_s))
