"""The TLS probe and the client's own files: no prompt, and a reason that says "files".

The channel's TLS probe of a failing endpoint (:mod:`meshkit.auth._probe`) loads the
client certificate and key from ``TLSOptions``' paths each time. A key file replaced,
while the process runs, by an encrypted key (a renewal made with ``openssl ... -aes256``:
``TLSOptions`` and the reloader refuse one, the probe read it anyway) made OpenSSL ask
``Enter PEM pass phrase:`` on the process's terminal and wait there, holding the event
loop (and every call of the process) until someone pressed Enter. Now the probe gives
OpenSSL an empty password: such a key fails to load, the reason says the files could not
be loaded, and nothing reads the terminal. Files that cannot be read are named as such
(the reason read "connect failed: ..." before).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit.auth._probe import handshake_problem
from tests.auth.conftest import TD, Pki
from tests.support.terminal import run_on_a_terminal

pytestmark = pytest.mark.timeout(60)


def test_an_encrypted_key_file_is_no_terminal_prompt(pki: Pki, tmp_path: Path) -> None:
    client = pki.issue("clientd")
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = tmp_path / "clientd.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    code = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path.cwd())!r})
        from meshkit.auth._probe import handshake_problem
        why = asyncio.run(handshake_problem(
            "127.0.0.1", 9, ca_file={str(client.ca_file)!r},
            cert_file={str(client.cert_file)!r}, key_file={str(encrypted)!r},
            server_name="whod.svc.{TD}", expected_id="x", client_id="y", timeout_s=5))
        print("RESULT", why)
        print("END")
    """)
    out = run_on_a_terminal(code, 30)
    assert b"pass phrase" not in out, out
    assert b"RESULT the client's certificate files could not be loaded" in out, out
    assert b"secret" not in out


async def test_unreadable_client_files_are_named_as_files(pki: Pki) -> None:
    client = pki.issue("clientd")
    why = await handshake_problem(
        "127.0.0.1", 9, ca_file=str(client.ca_file), cert_file="/nonexistent.pem",
        key_file="/nonexistent.key", server_name=f"whod.svc.{TD}", expected_id="x",
        client_id="y", timeout_s=5)
    assert why == ("the client's certificate files could not be loaded "
                   "(No such file or directory)")
