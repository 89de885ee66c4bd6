"""JetStream names are at most 255 bytes (nats-server: "stream name is too long,
maximum allowed is 255", err 10052; "consumer name is too long", 10102). A longer
``stream`` or ``durable`` was accepted by the options, refused only at ``start()`` (and
retried for ever by ``run()``), and one of about 4,000 bytes made the pull request's
protocol line exceed the server's ``max_control_line``: the server closed the
consumer's connection for good."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions, PublishOptions


@pytest.mark.parametrize("field", ["stream", "durable"])
@pytest.mark.parametrize("length", [256, 4100])
def test_a_name_longer_than_jetstream_takes_is_a_config_error(field: str, length: int) -> None:
    """ConfigError naming the field; 255 still taken (guard)."""
    names = {"stream": "ORDERS", "durable": "d"}
    with pytest.raises(ConfigError, match=field):
        ConsumerOptions(**{**names, field: "n" * length})  # type: ignore[arg-type]
    ConsumerOptions(**{**names, field: "n" * 255})  # type: ignore[arg-type]


def test_a_publish_options_stream_longer_than_jetstream_takes_is_a_config_error() -> None:
    """PublishOptions(stream=...) likewise (no stream can have that name)."""
    with pytest.raises(ConfigError, match="stream"):
        PublishOptions(stream="S" * 256)
    with pytest.raises(ConfigError, match="stream"):
        PublishOptions(stream="é" * 128)  # 256 bytes


def test_a_dead_letter_subject_too_long_for_the_protocol_line_is_a_config_error() -> None:
    """A dead_letter_subject of 4,000 bytes: every dead letter's HPUB line would exceed
    the server's max_control_line (4096), and the server close the consumer's
    connection for good; refused at construction. 3,800 bytes still taken (guard)."""
    with pytest.raises(ConfigError, match="dead_letter_subject"):
        ConsumerOptions(stream="ORDERS", durable="d", dead_letter_subject="dlq." + "x" * 4000)
    ConsumerOptions(stream="ORDERS", durable="d", dead_letter_subject="dlq." + "x" * 3800)
