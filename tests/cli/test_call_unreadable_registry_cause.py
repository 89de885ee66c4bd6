"""``meshkit call SERVICE/Method`` on a registry that cannot be read says why, at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_ops_commands import meshkit_cli

pytestmark = pytest.mark.timeout(60)


async def test_a_service_target_on_an_unreadable_registry_names_the_cause(
        tmp_path: Path) -> None:
    """A local registry whose path cannot be opened (under a file, a typo's missing
    directory, a file that is no database) ended ``call greeter/SayHello`` only when
    ``--timeout-s`` ran out (10 s by default) with ``UNAVAILABLE: ... no answer for
    'greeter' within 10.0 s``: the service's instances were read through a watch, which
    retries a failing read until its deadline. ``services`` and a ``/pkg.Svc/Method``
    target said the cause at once. The instances are now read as ``services`` reads
    them (one ``snapshot()``), so the call ends at once with the registry's own error,
    still ``UNAVAILABLE`` (78)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    code, out, err = await meshkit_cli(
        "call", "greeter/SayHello", "{}", "--registry", f"local://{blocker / 'registry'}",
        "--insecure", "--timeout-s", "8")
    assert (code, out) == (64 + 14, ""), err
    last = err.splitlines()[-1]
    assert last.startswith("ERROR: UNAVAILABLE: the service registry cannot be read: "), err
    assert "Not a directory" in last and "no answer" not in last, err
