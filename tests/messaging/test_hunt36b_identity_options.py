"""Bad options of MessageSigner / MessageVerifier are refused when they are made, as
PeerVerifier's are, not accepted silently nor left to fail at the first message."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import MessageSigner, MessageVerifier
from tests.messaging.conftest import Workloads


@pytest.mark.parametrize("value", [True, False])
def test_verifier_max_entries_bool_is_refused(workloads: Workloads, value: bool) -> None:
    """``max_entries=True`` was taken as a cache of one entry (``False`` was refused with a
    message saying an integer >= 1); PeerVerifier refuses both."""
    with pytest.raises(ConfigError, match="max_entries"):
        MessageVerifier(workloads.ca_pem, max_entries=value)


def test_signer_clock_not_callable_is_refused(workloads: Workloads) -> None:
    """``clock=time.time()`` (the value, not the clock) was accepted, and every
    ``sign`` then raised ``TypeError: 'float' object is not callable``: each publish
    failed, long after the configuration was read."""
    cert, key = workloads.orderd
    with pytest.raises(ConfigError, match="clock"):
        MessageSigner(cert, key, clock=1.7e9)  # type: ignore[arg-type]
