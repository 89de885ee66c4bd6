"""ConsulRegistry: a client key file (``key_file``, ``CONSUL_CLIENT_KEY``) that is encrypted
(protected by a pass phrase: ``openssl genpkey ... -aes256``) is refused with a reason that
names it, never by a prompt on the process's terminal.

The HTTP client's TLS context loaded the key with ``SSLContext.load_cert_chain`` and no
``password``, so OpenSSL asked ``Enter PEM pass phrase:`` on the process's terminal (stdin
when it has none) and waited there, inside the event loop: a service started from a shell
hung at its first register() or watch, every call of the process with it, until someone
typed; without a terminal the prompt was written all the same and the error read
``OSError: [Errno 22] Invalid argument``, naming nothing. Consul's own client cannot load
such a key either (Go's ``tls.LoadX509KeyPair``). The key is now loaded with a password
callback that refuses: the error says the key file is encrypted and names it.
(The mTLS probe had the same fault, fixed in 3eeb7e3c; this is the Consul client's.)
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.support.terminal import encrypted_client_files, run_on_a_terminal

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_an_encrypted_client_key_is_no_terminal_prompt(tmp_path: Path, verify: bool) -> None:
    cert_file, key_file = encrypted_client_files(tmp_path)
    code = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path.cwd())!r})
        from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
        from meshkit.discovery._types import Instance
        from meshkit.errors import RegistryError

        async def main():
            registry = ConsulRegistry(ConsulOptions(
                addr="https://127.0.0.1:9", verify={verify!r},
                cert_file={cert_file!r}, key_file={key_file!r}, request_timeout_s=2))
            try:
                await registry.register(Instance(service="orderd", instance_id="orderd-1",
                                                 host="127.0.0.1", port=50051))
            except RegistryError as exc:
                print("RESULT", exc)
            finally:
                await registry.close()

        asyncio.run(main())
        print("END")
    """)
    out = run_on_a_terminal(code, 9)
    assert b"Enter PEM" not in out, out
    assert b"RESULT" in out and b"END" in out, out
    assert b"is encrypted" in out and key_file.encode() in out, out


async def test_the_error_names_the_key_file(tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """Without a terminal (a service under systemd, a container): the reason, and no
    prompt written on stderr."""
    if _terminal_attached():
        pytest.skip("a terminal is attached: the unfixed code would prompt on it")
    cert_file, key_file = encrypted_client_files(tmp_path)
    registry = ConsulRegistry(ConsulOptions(addr="https://127.0.0.1:9", cert_file=cert_file,
                                            key_file=key_file, request_timeout_s=2))
    try:
        with pytest.raises(RegistryError) as info:
            await registry.register(make_instance(unique_service(), 1))
    finally:
        await registry.close()
    assert "is encrypted" in str(info.value) and key_file in str(info.value)
    assert "secret-phrase" not in str(info.value)
    assert "Enter PEM" not in capfd.readouterr().err


def _terminal_attached() -> bool:
    """Whether this process has a terminal OpenSSL's prompt would read."""
    if os.isatty(0):
        return True
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False
