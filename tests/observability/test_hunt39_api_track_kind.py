"""track(obj, kind=...) -- how a channel or server of one's own joins /debug/mesh, the
metrics and /readyz -- refuses a kind other than "channel" or "server" and an object
without stats(), ConfigError quoting it: ``kind="Channel"`` (or any typo) registered the
object as a server, which /readyz then counted as a server whose stats() is no
ServerStats; an object that cannot be weakly referenced raised a bare TypeError."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import track

pytestmark = pytest.mark.timeout(60)


class _Channel:
    live = True

    def stats(self) -> None:
        return None


@pytest.mark.parametrize("kind", ["Channel", "chan", "none", "empty"])
def test_a_kind_other_than_channel_or_server_is_a_config_error(kind: str) -> None:
    value = {"Channel": "Channel", "chan": "chan", "none": None, "empty": ""}[kind]
    with pytest.raises(ConfigError) as caught:
        track(_Channel(), kind=value)  # type: ignore[arg-type]
    assert "kind" in str(caught.value) and repr(value) in str(caught.value)


@pytest.mark.parametrize("obj", ["an-int", "no-stats"])
def test_an_object_without_stats_is_a_config_error(obj: str) -> None:
    value = {"an-int": 5, "no-stats": object()}[obj]
    with pytest.raises(ConfigError) as caught:
        track(value, kind="channel")  # type: ignore[arg-type]
    assert "stats" in str(caught.value)


def test_channels_and_servers_are_still_tracked() -> None:
    from meshkit.observability._live import tracked

    channel, server = _Channel(), _Channel()
    track(channel, kind="channel")  # type: ignore[arg-type]
    track(server, kind="server")  # type: ignore[arg-type]
    assert any(o is channel for o in tracked("channel"))
    assert any(o is server for o in tracked("server"))
    assert not any(o is channel for o in tracked("server"))
