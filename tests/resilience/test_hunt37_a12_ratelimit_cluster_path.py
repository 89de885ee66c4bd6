"""A Redis Cluster storage URI with a path is refused, not ignored.

``async+redis+cluster://h:7000/2`` was taken: ``limits`` builds the cluster client from
the hosts and the user info alone (a cluster has database 0 only), so two services told
apart by ``/1`` and ``/2`` shared db 0 and, under the default key prefix, one budget,
without a word (as ``?db=2`` did before it was refused). A path other than ``/`` is now
a ConfigError at construction; ``key_prefix`` is what keeps services apart there.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions


@pytest.mark.parametrize("tail", ["/2", "/0", "/orders", "/2/"])
def test_a_cluster_path_is_refused(tail: str) -> None:
    """Refused naming the path and key_prefix, never the password."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second",
                         storage_uri=f"async+redis+cluster://:pw-a12y@127.0.0.1:7000{tail}")
    text = str(caught.value)
    assert repr(tail) in text and "key_prefix" in text and "pw-a12y" not in text, text


@pytest.mark.parametrize("tail", ["", "/"])
def test_a_cluster_uri_without_a_path_is_taken(tail: str) -> None:
    RateLimitOptions(default_rule="1/second",
                     storage_uri=f"async+redis+cluster://127.0.0.1:7000,127.0.0.1:7001{tail}")
