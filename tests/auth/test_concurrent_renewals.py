"""Two renewals of the same workload at once (a renewal job and an operator's
``meshkit certs issue orderd --force``, two sidecars sharing a volume) leave a pair that
matches.

Each renewal put its key, then its certificate, in place: when the second one's key and
certificate landed between the first one's two, the directory held the second's key
beside the first's certificate, a pair that matched nothing (servers skipped it, and the
workload could not restart). Renewals into one directory are now serialised (an
exclusive ``flock`` on the directory from the existence checks to the last file placed).
The interleaving is the real second renewal, run in a thread at the point where the first
has placed its key (``os.replace`` wrapped to start it there).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from meshkit.auth import TLSOptions
from meshkit.auth._certs import init_ca_dir, issue_into_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock")


def test_a_renewal_landing_between_another_ones_files_leaves_a_matching_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain="meshkit.test")
    issue_into_dir(d, "orderd", ttl_h=1)
    real_replace = os.replace
    second: list[threading.Thread] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        if Path(dst).name == "orderd.key" and not second:  # the first renewal's key placed
            t = threading.Thread(target=issue_into_dir, args=(d, "orderd"),
                                 kwargs={"ttl_h": 1, "overwrite": True})
            second.append(t)
            t.start()
            t.join(0.5)  # it completes now unless it waits for this renewal to end

    monkeypatch.setattr(os, "replace", replace)
    issue_into_dir(d, "orderd", ttl_h=1, overwrite=True)
    second[0].join(10)
    assert not second[0].is_alive()
    monkeypatch.undo()
    TLSOptions(ca_file=d / "ca.pem", cert_file=d / "orderd.pem", key_file=d / "orderd.key")
