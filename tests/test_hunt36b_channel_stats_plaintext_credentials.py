"""``MeshChannel.stats()`` (``/debug/mesh``) reported ``"tls": true`` for any channel
given ``credentials=``, also ``grpc.experimental.insecure_channel_credentials()``: a
plaintext channel shown to an operator auditing the mesh as encrypted."""

from __future__ import annotations

import grpc
import grpc.experimental

import meshkit
from meshkit.discovery import LocalRegistry


async def test_plaintext_credentials_are_not_reported_as_tls(registry: LocalRegistry) -> None:
    for creds, tls in ((grpc.experimental.insecure_channel_credentials(), False),
                       (grpc.ssl_channel_credentials(), True)):
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(credentials=creds))
        try:
            assert ch.stats().policies["tls"] is tls, creds
        finally:
            await ch.close()
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
    try:
        assert ch.stats().policies["tls"] is False
    finally:
        await ch.close()
