"""TokenForwarder's ``services`` refused at construction when it cannot be service names."""

from __future__ import annotations

import pytest

from meshkit.auth import TokenForwarder
from meshkit.errors import ConfigError


@pytest.mark.parametrize(("services", "quoted"), [
    ((b"userd",), "b'userd'"),
    (("userd", None), "None"),
    (5, "5"),
])
def test_services_that_are_not_names_are_refused(services: object, quoted: str) -> None:
    """``services=(b"userd",)`` (bytes from a config file) matched no service, so the
    token was never forwarded, in silence, and ``services=5`` raised a ``TypeError``:
    both are now a ``ConfigError`` quoting the value."""
    with pytest.raises(ConfigError, match="services") as info:
        TokenForwarder(services=services)  # type: ignore[arg-type]
    assert quoted in str(info.value)


def test_a_list_of_names_is_taken() -> None:
    """Any collection of strings is taken, a list included."""
    TokenForwarder(services=["userd", "orderd"])  # type: ignore[arg-type]
