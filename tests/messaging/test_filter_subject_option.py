"""``ConsumerOptions.filter_subject`` is checked when the options are built: a subject
JetStream refuses as a filter (whitespace, an empty token, ``>`` before the last token, a
wildcard inside a token) used to be accepted, and ``Consumer.run()`` then retried the
refused ``start()`` for ever after one warning."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions


@pytest.mark.parametrize("bad", ["orders created", "orders. x", "orders..x", "orders.",
                                 ".orders", "orders.>.x", "orders.a>", "orders.\tx",
                                 " ", "orders.*x", "orders\n"])
def test_a_filter_subject_jetstream_refuses_is_a_config_error(bad: str) -> None:
    """ConfigError naming filter_subject and quoting the value."""
    with pytest.raises(ConfigError, match="filter_subject") as caught:
        ConsumerOptions(stream="ORDERS", durable="d", filter_subject=bad)
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize("good", ["orders", "orders.created", "orders.*", "orders.>",
                                  "*.created", ">", "orders.*.x", "", "orders.é"])
def test_filter_subjects_with_wildcards_are_still_taken(good: str) -> None:
    """Whole-token wildcards, ``>`` last, unicode tokens; ``""`` as no filter (guard)."""
    ConsumerOptions(stream="ORDERS", durable="d", filter_subject=good)
