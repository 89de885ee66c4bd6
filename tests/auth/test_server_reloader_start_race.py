"""A renewal landing while a server's credentials are being built is served.

``_ServerReloader`` read the files, then recorded their ``stat`` as the state in force:
a renewal written between the two (a pod starting while cert-manager renews its Secret)
was recorded as already served, so every later check saw "no change" and the server
presented the old certificate until it expired, the renewed files on disk untouched. The
``stat`` is now taken before the read (as the reloader's checks and ``PeerVerifier`` do),
so such a renewal reads as a change at the next check. The renewal is real files written
at that point of the build (``TLSOptions._read_own`` wrapped to write them after it read).
"""

from __future__ import annotations

import pytest

from meshkit.auth import TLSOptions
from meshkit.auth._tls import _ServerReloader
from tests.auth.conftest import Pki


def test_a_renewal_written_while_the_reloader_starts_is_taken(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    pki.issue("userd")
    tls = pki.options("userd", reload_interval_s=1e-9)
    read_own = TLSOptions._read_own

    def read_then_renew(self: TLSOptions) -> object:
        material = read_own(self)
        pki.issue("userd", overwrite=True)  # lands after the read
        return material

    monkeypatch.setattr(TLSOptions, "_read_own", read_then_renew)
    reloader = _ServerReloader(tls)
    monkeypatch.undo()
    started = reloader.current.cert_pem
    renewed = tls.cert_file.read_bytes()
    assert started != renewed
    assert reloader() is not None  # was None: the renewal taken for the files in force
    assert reloader.current.cert_pem == renewed
