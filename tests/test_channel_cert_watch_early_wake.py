"""The channel's certificate watch takes a renewal at its next round, whatever the clock
says (meshkit/channel.py, ``MeshChannel._watch_certificates``).

The loop slept ``reload_interval_s`` and then called ``reloader.check()``, which skips
the round unless its own clock (``TLSOptions.clock``) shows ``reload_interval_s`` gone
since the last check. A sleep that wakes a hair early by that clock (uvloop rounds its
timers to the millisecond and may fire one early; a ``clock`` coarser than the loop's)
made that round a no-op, so a renewal was taken one interval late, or with a clock that
lags the loop's, later still. The loop itself keeps the interval: it checks with
``force=True``. Here the clock stands still (the extreme of a clock that advances less
than the loop's sleeps): the renewal was never taken before."""

from __future__ import annotations

from pathlib import Path

import meshkit
from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
from meshkit.discovery import LocalRegistry
from tests.auth.conftest import TD
from tests.support.wait import until


async def test_a_renewal_is_taken_though_the_clock_shows_less_than_the_interval(
        tmp_path: Path, registry: LocalRegistry) -> None:
    pki = tmp_path / "pki"
    init_ca_dir(pki, trust_domain=TD, ttl_days=2)
    files = issue_into_dir(pki, "clientd", ttl_h=1.0, dns=("localhost",),
                           ips=("127.0.0.1",))
    tls = TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                     key_file=files.key_file, reload_interval_s=0.05,
                     clock=lambda: 1000.0)  # stands still: every sleep "wakes early"
    async with meshkit.dial("whod", registry=registry,
                            options=meshkit.DialOptions(tls=tls)) as ch:
        reloader = ch._reloader
        assert reloader is not None and reloader.generation == 1
        issue_into_dir(pki, "clientd", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",),
                       overwrite=True)
        await until(lambda: reloader.generation == 2, timeout_s=5,  # never, before
                    what="renewal taken")
