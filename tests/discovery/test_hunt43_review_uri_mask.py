"""Review of 55c5726d (a query piece whose '=' was percent-encoded is masked): a secret
run into a key by an encoded '=' still reached the URI shown in errors and logs when

* the piece also held a literal '=' (base64 padding: ``?password%3DabcDEF==`` was shown
  ``password%3DabcDEF=***``: the key, with the secret in it, kept as written), or
* the pair was percent-encoded twice (a template encoding an already encoded value:
  ``?password%253Ds3cret`` was shown as written, and quoted decoded once as "unknown
  option 'password%3Ds3cret'").

Both are masked now; plain option names and values are still shown as written."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshkit._uris import mask_query, shown_value
from meshkit.discovery import ConsulOptions, EtcdOptions
from meshkit.errors import ConfigError

_SECRET = "s3cretTok"


@pytest.mark.parametrize("query", [
    f"password%3D{_SECRET}==",  # an encoded '=', then base64 padding
    f"password%3d{_SECRET}=",  # lowercase, one pad
    f"password%253D{_SECRET}",  # encoded twice
    f"password%253d{_SECRET}",
    f"ttl_s=5%253Bpassword%253D{_SECRET}",  # a run-in pair encoded twice in a value
    f"password%25253D{_SECRET}",  # three times
], ids=["padding", "lower-padding", "double", "double-lower", "double-value", "triple"])
def test_mask_query_hides_the_secret(query: str) -> None:
    shown = mask_query(f"h:2379?{query}", {"ttl_s"})
    assert _SECRET not in shown, shown
    assert shown.startswith("h:2379?"), shown


def test_harmless_pieces_are_still_shown_as_written() -> None:
    assert mask_query("h:2379?verify&ttl_s=5", {"verify", "ttl_s"}) == "h:2379?verify&ttl_s=5"
    assert mask_query("h:2379?ca_file=/etc/a%20b.pem", {"ca_file"}) == (
        "h:2379?ca_file=/etc/a%20b.pem")
    assert mask_query("h:2379?ttl_s=5&x=1", {"ttl_s"}) == "h:2379?ttl_s=5&x=***"
    assert shown_value("5") == "'5'"
    assert shown_value("/etc/a b.pem") == "'/etc/a b.pem'"


@pytest.mark.parametrize("parse", [
    lambda: EtcdOptions.from_uri(f"etcd://h:2379?password%3D{_SECRET}==", environ={}),
    lambda: ConsulOptions.from_uri(f"consul://h:8500?token%3D{_SECRET}=", environ={}),
    lambda: EtcdOptions.from_uri(f"etcd://h:2379?password%253D{_SECRET}", environ={}),
    lambda: ConsulOptions.from_uri(f"consul://h:8500?token%253d{_SECRET}", environ={}),
    lambda: EtcdOptions.from_uri(f"etcd://h:2379?ttl_s=5%253Bpassword%253D{_SECRET}",
                                 environ={}),
], ids=["etcd-padding", "consul-padding", "etcd-double", "consul-double", "etcd-value"])
def test_the_error_does_not_quote_the_secret(parse: Callable[[], object]) -> None:
    with pytest.raises(ConfigError) as info:
        parse()
    assert _SECRET not in str(info.value), str(info.value)
    assert _SECRET not in repr(info.value.args), info.value.args
