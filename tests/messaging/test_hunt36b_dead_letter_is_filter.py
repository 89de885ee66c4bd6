"""A consumer acks every message on its own dead-letter subject without running its
handler (its dead letters, seen by a filter that covers them). A ``dead_letter_subject``
that *is* the ``filter_subject`` (a slip: ``dead_letter_subject="orders.created"`` for
the consumer of ``orders.created``) made every message such a one: all were acked
unhandled, outcome ``skipped``, silently. Refused when the options are made."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions


def test_a_dead_letter_subject_equal_to_the_filter_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"orders\.created"):
        ConsumerOptions(stream="ORDERS", durable="summary", filter_subject="orders.created",
                        dead_letter_subject="orders.created")


def test_a_filter_equal_to_the_default_dead_letter_subject_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"dlq\.ORDERS\.summary"):
        ConsumerOptions(stream="ORDERS", durable="summary",
                        filter_subject="dlq.ORDERS.summary")


def test_a_filter_covering_the_dead_letter_subject_is_still_taken() -> None:
    """A wildcard filter that also covers the dead letters is the designed case."""
    o = ConsumerOptions(stream="ORDERS", durable="summary", filter_subject="orders.>",
                        dead_letter_subject="orders.dlq")
    assert o.dead_letter_for() == "orders.dlq"
