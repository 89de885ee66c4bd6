"""``ConsumerOptions.fetch_timeout_s`` (a pull's ``expires``) has a floor no pull is
dropped below: checked when the options are built."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions


@pytest.mark.parametrize("tiny", [1e-9, 1e-6, 1e-5, 0.0009])
def test_a_fetch_timeout_no_pull_can_wait_is_a_config_error(tiny: float) -> None:
    """fetch_timeout_s below 1 ms: a pull whose expiry has passed when nats-server reads
    it is dropped unanswered (nats-server 2.9.10: with 1e-5 s or less the consumer never
    handled a waiting message in 5 s; 1e-4 s handled it 0.5 s late), so it is refused
    with the value quoted."""
    with pytest.raises(ConfigError, match="fetch_timeout_s"):
        ConsumerOptions(stream="ORDERS", durable="d", fetch_timeout_s=tiny)
    ConsumerOptions(stream="ORDERS", durable="d", fetch_timeout_s=0.001)  # guard
