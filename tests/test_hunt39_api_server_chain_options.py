"""server_chain(service, options) -- the public way to get serve()'s interceptors for a
grpc.aio server of one's own -- refuses options that are no ServeOptions, ConfigError
naming them: ``server_chain("orderd", None)`` raised a bare ``AttributeError: 'NoneType'
object has no attribute 'telemetry'`` and a DialOptions (the client's) one about
``expose_exception_text``."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_WRONG = {"none": None, "dial-options": meshkit.DialOptions(insecure=True), "true": True}


@pytest.mark.parametrize("value", sorted(_WRONG))
def test_options_that_are_no_serve_options_are_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        meshkit.server_chain("orderd", _WRONG[value])  # type: ignore[arg-type]
    assert "options" in str(caught.value) and "ServeOptions" in str(caught.value)


def test_serve_options_still_give_the_chain() -> None:
    chain = meshkit.server_chain("orderd", meshkit.ServeOptions(insecure=True))
    assert chain and all(hasattr(i, "intercept_service") for i in chain)
