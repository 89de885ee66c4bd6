"""Wrong types given to ``PeerVerifier`` and ``TLSOptions(allowed_peers=...)`` are a
``ConfigError`` quoting the value when built, not a ``TypeError`` later.

``PeerVerifier(clock=time.time())`` (the clock's value) was taken, and every call the
server's peer check then ran failed with ``'float' object is not callable`` (the
interceptor's unhandled error, ``UNKNOWN``); ``from_file(reload_interval_s="5")`` raised
a bare ``TypeError`` from a comparison, ``max_entries=True`` was taken as a cache of one,
a ``str`` bundle (``Path.read_text()``) raised cryptography's ``TypeError``; and
``TLSOptions(allowed_peers=None)`` (for "every workload") raised ``TypeError: 'NoneType'
object is not iterable``.
"""

from __future__ import annotations

import time

import pytest

from meshkit.auth import PeerVerifier
from meshkit.errors import ConfigError
from tests.auth.conftest import Pki


@pytest.mark.parametrize("clock", [12.5, None], ids=["a float", "None"])
def test_a_verifier_clock_that_cannot_be_called_is_refused(pki: Pki, clock: object) -> None:
    with pytest.raises(ConfigError, match=r"clock.*" + repr(clock).replace(".", r"\.")):
        PeerVerifier(None, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clock"):
        PeerVerifier.from_file(pki.dir / "ca.pem", clock=clock)  # type: ignore[arg-type]
    assert PeerVerifier.from_file(pki.dir / "ca.pem", clock=time.time).anchored


def test_verifier_numbers_and_bundle_of_the_wrong_type_are_refused(pki: Pki) -> None:
    for interval in ("5", True, float("nan"), 0):
        with pytest.raises(ConfigError, match=r"reload_interval_s.*" + repr(interval)):
            PeerVerifier.from_file(pki.dir / "ca.pem",
                                   reload_interval_s=interval)  # type: ignore[arg-type]
    for entries in (True, 0, 2.0):
        with pytest.raises(ConfigError, match=r"max_entries.*" + repr(entries)):
            PeerVerifier(None, max_entries=entries)  # type: ignore[arg-type]
    text = (pki.dir / "ca.pem").read_text()
    with pytest.raises(ConfigError, match=r"ca_pem must be bytes.*str"):
        PeerVerifier(text)  # type: ignore[arg-type]
    assert PeerVerifier(text.encode()).anchored


def test_allowed_peers_none_is_refused_quoted(pki: Pki) -> None:
    pki.issue("orderd")
    with pytest.raises(ConfigError, match=r"allowed_peers.*None"):
        pki.options("orderd", allowed_peers=None)
    assert pki.options("orderd", allowed_peers=[]).allowed_peers == ()
