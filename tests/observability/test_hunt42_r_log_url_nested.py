"""A URL's user info is redacted in the values of a dict field and in a list or tuple of
strings too, where credential-named keys already are (one level deep), not only in a
field that is itself a string (6201c58d): ``brokers=["amqp://app:pw@mq1/",
"amqp://app:pw@mq2/"]`` (a cluster's URLs, as NATS and Kafka clients take them) or
``db={"url": "postgresql://app:pw@db/x"}`` went out with the password."""

from __future__ import annotations

import pytest

from meshkit.observability import redact_secrets


@pytest.mark.parametrize(("value", "shown"), [
    (["amqp://app:pw@mq1/", "amqp://app:pw@mq2/", 3],
     ["amqp://[REDACTED]@mq1/", "amqp://[REDACTED]@mq2/", 3]),
    (("redis://:pw@c1:6379/0", "plain@text"), ("redis://[REDACTED]@c1:6379/0", "plain@text")),
    ({"url": "postgresql://app:pw@db/x", "password": "x", "n": 1},
     {"url": "postgresql://[REDACTED]@db/x", "password": "[REDACTED]", "n": 1}),
    ({"url": b"postgresql://app:pw@db/x"}, {"url": b"postgresql://[REDACTED]@db/x"}),
    ([("x-callback", "https://u:pw@hook/x"), ("authorization", "Bearer t")],
     [("x-callback", "https://[REDACTED]@hook/x"), ("authorization", "[REDACTED]")]),
    (["no urls", "a@b"], ["no urls", "a@b"]),
], ids=["list", "tuple", "dict", "dict-bytes", "pairs", "untouched"])
def test_url_user_info_one_level_deep(value: object, shown: object) -> None:
    out = redact_secrets(None, "info", {"event": "e", "v": value})
    assert out["v"] == shown
    assert type(out["v"]) is type(shown)
