"""EtcdOptions (follow-up to e93711b9): an endpoint carrying user info
(``http://root:<password>@etcd:2379``, in ``endpoints`` or ``ETCDCTL_ENDPOINTS``) was
refused ("without user info", the password masked) with no word of where etcd's user
name and password go, where the URI's refusal now names ``EtcdOptions(user=...,
password=...)`` (e93711b9). The endpoint's refusal names them too; the password is
still never quoted."""

from __future__ import annotations

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.errors import ConfigError

_URL = "http://root:pw-S3CRET@127.0.0.1:2379"


@pytest.mark.parametrize("build", [
    lambda: EtcdOptions(endpoints=(_URL,)),
    lambda: EtcdOptions.from_env({"ETCDCTL_ENDPOINTS": _URL}),
], ids=["endpoints", "ETCDCTL_ENDPOINTS"])
def test_an_endpoint_with_user_info_says_where_they_go(build: object) -> None:
    with pytest.raises(ConfigError) as info:
        build()  # type: ignore[operator]
    text = str(info.value) + repr(info.value.args)
    assert "user info" in text and "EtcdOptions(user=..., password=...)" in text, text
    assert "S3CRET" not in text, text


def test_another_bad_endpoint_is_told_as_before() -> None:
    with pytest.raises(ConfigError) as info:
        EtcdOptions(endpoints=("http://127.0.0.1:notaport",))
    assert "EtcdOptions(user=" not in str(info.value)
