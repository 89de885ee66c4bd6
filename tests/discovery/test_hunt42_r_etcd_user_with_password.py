"""EtcdOptions (c4fb056f): ``user`` written as etcdctl's ``--user`` takes it,
``name:password`` (``ETCDCTL_USER=root:s3cret`` copied into ``user=``), without
``password``: the ConfigError quoted the user, the password in it
(``got user='root:s3cret' and no password``), into a traceback and the service's start-up
log. It is not quoted then, and the message says where the password goes."""

from __future__ import annotations

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.errors import ConfigError


def test_a_user_holding_name_colon_password_is_not_quoted() -> None:
    with pytest.raises(ConfigError) as info:
        EtcdOptions(user="root:s3cret-Pa55")
    text = str(info.value) + repr(info.value.args)
    assert "s3cret" not in text, text
    assert "password=" in text and "name:password" in text, text


def test_a_plain_user_is_still_quoted() -> None:
    with pytest.raises(ConfigError, match="user='root' and no password"):
        EtcdOptions(user="root")
