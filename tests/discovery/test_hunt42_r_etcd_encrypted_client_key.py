"""EtcdRegistry: a client key file (``key_file``, ``ETCDCTL_KEY``) that is encrypted
(protected by a pass phrase: ``openssl genpkey ... -aes256``) is refused with a reason that
names it, never by a prompt on the process's terminal.

The session's TLS context loaded the key with ``SSLContext.load_cert_chain`` and no
``password``, so OpenSSL asked ``Enter PEM pass phrase:`` on the process's terminal (stdin
when it has none) and waited there, inside the event loop (twice: the watch's read and a
call each tried): a service started from a shell hung at its first register() or watch
until someone typed; without a terminal the prompt was written all the same and the error
read ``RegistryError: etcd: cannot list services: OSError: [Errno 22] Invalid argument``,
naming nothing. etcdctl cannot load such a key either (Go's ``tls.LoadX509KeyPair``). The
Consul registry's twin was fixed in 64c3df1a; this is the etcd registry's.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.support.terminal import PHRASE, encrypted_client_files, run_on_a_terminal

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_an_encrypted_client_key_is_no_terminal_prompt(tmp_path: Path, verify: bool) -> None:
    """From a shell: register() and services() fail at once with the reason; no prompt
    (before: 'Enter PEM pass phrase:' and the process waited there, the loop held)."""
    cert_file, key_file = encrypted_client_files(tmp_path)
    code = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path.cwd())!r})
        from meshkit.discovery import EtcdOptions, EtcdRegistry
        from meshkit.discovery._types import Instance
        from meshkit.errors import RegistryError

        async def main():
            registry = EtcdRegistry(EtcdOptions(
                endpoints=("https://127.0.0.1:9",), verify={verify!r},
                cert_file={cert_file!r}, key_file={key_file!r}, request_timeout_s=1,
                operation_timeout_s=1))
            try:
                for call in (lambda: registry.register(Instance(
                        service="orderd", instance_id="orderd-1", host="127.0.0.1",
                        port=50051)), registry.services):
                    try:
                        await call()
                    except RegistryError as exc:
                        print("RESULT", exc)
            finally:
                await registry.close()

        asyncio.run(main())
        print("END")
    """)
    out = run_on_a_terminal(code, 15)
    assert b"Enter PEM" not in out, out
    results = [line for line in out.splitlines() if line.startswith(b"RESULT")]
    assert len(results) == 2 and b"END" in out, out
    for line in results:
        assert b"is encrypted" in line and key_file.encode() in line, out
    assert PHRASE not in out


async def test_the_error_names_the_key_file(tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """Without a terminal (a service under systemd, a container): the reason, and no
    prompt written on stderr (before: 'OSError: [Errno 22] Invalid argument')."""
    if _terminal_attached():
        pytest.skip("a terminal is attached: the unfixed code would prompt on it")
    cert_file, key_file = encrypted_client_files(tmp_path)
    registry = EtcdRegistry(EtcdOptions(endpoints=("https://127.0.0.1:9",),
                                        cert_file=cert_file, key_file=key_file,
                                        request_timeout_s=1, operation_timeout_s=1))
    try:
        with pytest.raises(RegistryError) as info:
            await registry.services()
        with pytest.raises(RegistryError) as info2:
            await registry.register(make_instance(unique_service(), 1))
    finally:
        await registry.close()
    for error in (info.value, info2.value):
        assert "is encrypted" in str(error) and key_file in str(error), str(error)
        assert "ETCDCTL_KEY" in str(error)
        assert PHRASE.decode() not in str(error)
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
