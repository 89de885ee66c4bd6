"""URIs as errors quote them (``meshkit._uris.mask_query``): a secret that follows a
known option's value (``;``, an encoded ``&``, a ``?``) is masked with it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshkit._uris import mask_query
from meshkit.discovery._options import shown_uri


@pytest.mark.parametrize("query", [
    "ttl_s=5;password=hunter2",          # ';' as a separator (old CGI, some drivers)
    "ttl_s=5%3Bpassword%3Dhunter2",      # the same, percent-encoded
    "ttl_s=5%26password%3Dhunter2",      # an encoded '&'
    "ttl_s=5?password=hunter2",          # a second '?'
    "ttl_s=5&prefix=/x;token=hunter2",
])
def test_a_secret_after_a_known_options_value_is_masked(query: str) -> None:
    """``mask_query`` split the query on ``&`` only and showed a known key's value as
    written, so ``?ttl_s=5;password=hunter2`` was quoted whole by every error naming the
    URI (``meshkit services --registry 'local:///m?ttl_s=5;password=hunter2'``)."""
    shown = mask_query(f"h:2379/?{query}", {"ttl_s", "prefix"})
    assert "hunter2" not in shown, shown
    assert shown.startswith("h:2379/?ttl_s="), shown
    shown = shown_uri(f"etcd://h:2379?{query}", ("ttl_s", "prefix"))
    assert "hunter2" not in shown, shown


def test_plain_known_values_are_still_shown() -> None:
    assert mask_query("h:6379/0?db=1&password=pw", {"db"}) == "h:6379/0?db=1&password=***"
    assert mask_query("h?ttl_s=5;x=y&prefix=/a/b", {"ttl_s", "prefix"}) == \
        "h?ttl_s=5;x=***&prefix=/a/b"
    assert mask_query("h?ca_file=/run/a%40b/ca.pem", {"ca_file"}) == \
        "h?ca_file=/run/a%40b/ca.pem"


def test_the_uri_in_a_cli_error_holds_no_secret_after_a_semicolon() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "meshkit.cli", "services", "--registry",
         "consul://127.0.0.1:8500/x?ttl_s=5;password=hunter2", "--timeout-s", "1"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert "takes no path" in out.stderr and "hunter2" not in out.stderr, out.stderr
