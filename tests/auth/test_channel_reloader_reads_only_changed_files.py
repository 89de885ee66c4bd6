"""A client's certificate reloader reads the files only when they changed.

``ChannelCredentialsReloader.check()``, which a TLS channel runs on its event loop every
``reload_interval_s`` (5 s), read and checked the CA bundle, certificate and key each
time, changed or not: a read, two parses and a chain verification (1.2 ms measured on
the 2-core VM) blocking the loop, per channel, for ever, where the server's reloader and
``PeerVerifier`` compare the files' ``stat`` first. It now does too (the stat taken
before the read, as 8609c5c has it), so unchanged files cost a ``stat`` each; a renewal,
a half-written file and the files coming back are handled as before.
"""

from __future__ import annotations

import pytest

from meshkit.auth import TLSOptions
from tests.auth.conftest import Pki


def test_unchanged_files_are_not_read_again(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = pki.issue("orderd")
    reloader = tls.channel_reloader()
    reads = []
    read = TLSOptions.read

    def counting(self: TLSOptions) -> object:
        if self is tls:  # the reloader's (pki.issue builds options of its own)
            reads.append(1)
        return read(self)

    monkeypatch.setattr(TLSOptions, "read", counting)
    for _ in range(3):
        assert not reloader.check(force=True)
    assert reads == [], "unchanged files read again"
    # a renewal is still taken, once
    pki.issue("orderd", overwrite=True)
    assert reloader.check(force=True)
    assert not reloader.check(force=True)
    assert len(reads) == 1
    # a half-written key is skipped and read again at each check until it is whole
    key = tls.key_file.read_bytes()
    tls.key_file.write_bytes(key[: len(key) // 2])
    assert not reloader.check(force=True)
    assert not reloader.check(force=True)
    assert len(reads) == 3
    tls.key_file.write_bytes(key)
    assert not reloader.check(force=True)  # the pair in force: nothing to rebuild
    generation = reloader.generation
    assert not reloader.check(force=True)
    assert reloader.generation == generation
