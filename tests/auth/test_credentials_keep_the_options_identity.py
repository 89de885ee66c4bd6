"""Credentials made from a TLSOptions are those of the workload it was built for.

fbe4e7e made the reloaders keep the pair in force over another workload's files (a
wrong Secret mounted, a copy into the wrong directory): a reload never changes who the
workload is. But the first read of the credentials (``channel_reloader()``, what
``dial()`` makes; ``channel_credentials()``; ``server_credentials()``) took whatever the
files held then: with the files replaced between the ``TLSOptions`` (built at start-up)
and the first dial, every call went out as the other workload while
``TLSOptions.spiffe_id`` still named the first (X.509-SVID §2: the SVID *is* the
identity). They now refuse it, naming both SPIFFE IDs.
"""

from __future__ import annotations

import pytest

from meshkit.auth import CertificateError
from tests.auth.conftest import TD, Pki
from tests.auth.test_reload_keeps_identity import _copy_identity

pytestmark = pytest.mark.timeout(30)


def test_credentials_refuse_another_workloads_files(pki: Pki) -> None:
    client = pki.issue("orderd")
    pki.issue("gateway")
    _copy_identity(pki, "gateway", "orderd")
    for make in (client.channel_reloader, client.channel_credentials,
                 client.server_credentials):
        with pytest.raises(CertificateError) as info:
            make()
        msg = str(info.value)
        assert f"spiffe://{TD}/svc/gateway" in msg and f"spiffe://{TD}/svc/orderd" in msg, (
            make, msg)
    # a renewal of the same workload is fine
    pki.issue("orderd", overwrite=True)
    assert client.channel_reloader().generation == 1
    client.channel_credentials()
    client.server_credentials()
