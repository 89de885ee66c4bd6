"""A query option on a Sentinel or Cluster storage URI is refused, not ignored.

``limits`` builds a Sentinel client (``async+redis+sentinel://``) or a cluster client
(``async+redis+cluster://``) from the URI's hosts, user info and path alone and reads
none of its query: ``?db=2`` (meant to keep two services' counts apart) counted in db 0,
shared with every other service there under the default key prefix; ``?connect_timeout=``,
``?client_name=`` and the rest did nothing, all without a word.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions


@pytest.mark.parametrize("uri", [
    "async+redis+sentinel://:s3cr3tpw@127.0.0.1:26379/primary?db=2",
    "async+redis+sentinel://127.0.0.1:26379/primary?connect_timeout=1&db=2",
    "async+redis+cluster://:s3cr3tpw@127.0.0.1:7000,127.0.0.1:7001?client_name=orders"])
def test_a_query_option_limits_ignores_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second", storage_uri=uri)
    text = str(caught.value)
    assert "would be ignored" in text and "s3cr3tpw" not in text, text


@pytest.mark.parametrize("uri", ["async+redis+sentinel://:pw@127.0.0.1:26379/primary",
                                 "async+redis+cluster://127.0.0.1:7000,127.0.0.1:7001"])
def test_such_uris_without_a_query_are_taken(uri: str) -> None:
    RateLimitOptions(default_rule="1/second", storage_uri=uri)
