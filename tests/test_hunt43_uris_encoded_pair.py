"""A query piece with no ``=`` whose decoded text holds one (``?password%3Ds3cret``: a
pair whose ``=`` was percent-encoded) was shown as written by ``mask_query`` and quoted
decoded as an "unknown option 'password=s3cret'" by the registries' URI parsers: the
secret reached the error (and the start-up log). Such a piece is masked, as a value that
decodes to a run-in pair already was."""

from __future__ import annotations

import pytest

from meshkit._uris import mask_query
from meshkit.discovery import ConsulOptions, EtcdOptions
from meshkit.errors import ConfigError

_SECRET = "s3cretTok"


def test_mask_query_masks_a_piece_that_decodes_to_a_pair() -> None:
    shown = mask_query(f"h:2379?ttl_s=5&password%3D{_SECRET}", {"ttl_s"})
    assert _SECRET not in shown, shown
    assert shown.startswith("h:2379?ttl_s=5&"), shown
    # a bare option name is still shown as written
    assert mask_query("h:2379?verify", {"verify"}) == "h:2379?verify"


@pytest.mark.parametrize("parse", [
    lambda: EtcdOptions.from_uri(f"etcd://h:2379?password%3D{_SECRET}", environ={}),
    lambda: ConsulOptions.from_uri(f"consul://h:8500?token%3D{_SECRET}", environ={}),
    lambda: EtcdOptions.from_uri(f"etcd://h:2379?ttl_s=5&tok%26x%3D{_SECRET}", environ={}),
], ids=["etcd", "consul", "etcd-ampersand"])
def test_the_unknown_option_error_does_not_quote_the_secret(parse: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse()  # type: ignore[operator]
    assert _SECRET not in str(info.value), str(info.value)
    assert "unknown option" in str(info.value)
