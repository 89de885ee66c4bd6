"""ConsulRegistry: a ``ca_path`` (``CONSUL_CAPATH``) that cannot serve is refused with a
reason that reads as a sentence.

The reason was raised as ``ssl.SSLError("...")``, whose ``str()`` is the repr of its
arguments' tuple: the RegistryError read ``... SSLError: ("ca_path '/etc/consul/ca' holds
no certificate file",)``, quotes and brackets in a message written for a person, and
the same in the watch's warnings. Now it is ``OSError: ca_path '...' holds no
certificate file``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("content", [None, "not a certificate"], ids=["empty", "no-pem"])
async def test_the_reason_is_a_sentence(tmp_path: Path, content: str | None) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    if content is not None:
        (cas / "README").write_text(content)
    registry = ConsulRegistry(ConsulOptions(addr="https://127.0.0.1:9", ca_path=str(cas),
                                            request_timeout_s=2))
    try:
        with pytest.raises(RegistryError) as info:
            await registry.register(make_instance(unique_service(), 1))
    finally:
        await registry.close()
    message = str(info.value)
    assert f": OSError: ca_path {str(cas)!r}" in message, message
    assert not message.endswith("',)") and not message.endswith('",)'), message
    if content is None:
        assert message.endswith("holds no certificate file"), message
    else:
        assert message.endswith(f"no PEM certificate in {str(cas / 'README')!r}"), message
