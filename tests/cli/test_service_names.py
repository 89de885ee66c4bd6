"""Service names on the command line.

A mesh service name is what ``dial()`` and ``Instance`` take: letters, digits, ``-``,
``_`` and ``.``, 1 to 63 characters. ``meshkit call``'s target and ``--service`` and
``meshkit services --service`` are checked against that rule as usage errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_ops_commands import at_once, meshkit_cli

pytestmark = pytest.mark.timeout(60)


def test_the_rule_is_the_one_dial_and_instance_apply() -> None:
    """The rule, spelled out in ``meshkit._cli._common`` so that a usage error loads
    neither grpc nor the registries, is the one ``dial()`` and ``Instance`` apply."""
    from meshkit import channel
    from meshkit._cli._common import SERVICE_NAME
    from meshkit.discovery import _types

    assert SERVICE_NAME.pattern == _types._NAME_RE.pattern
    assert channel._SERVICE_RE.pattern == f"^{SERVICE_NAME.pattern}$"


async def test_a_service_name_no_instance_can_have_is_a_usage_error(tmp_path: Path) -> None:
    """``meshkit call`` with a target whose service holds a byte that is not UTF-8 (a
    mistyped or mis-encoded argument, ``$'gr\\xffeeter/SayHello'``) ended in a
    ``UnicodeEncodeError`` traceback from the registry read, exit 1; ``meshkit services
    --service 'a b'`` (or ``''``) said "no instance listed", exit 1, as if the name could
    be registered. Each is now a usage error: one line quoting the name, exit 2."""
    registry = f"local://{tmp_path / 'reg'}"
    runs = await at_once(
        meshkit_cli("call", "gr\udcffeeter/SayHello", "--registry", registry, "--insecure"),
        meshkit_cli("call", "a b/SayHello", "--registry", registry, "--insecure"),
        meshkit_cli("call", "/pkg.Svc/M", "--service", "gr\udcffeeter", "--registry",
                    registry, "--insecure"),
        meshkit_cli("services", "--service", "a b", "--registry", registry),
        meshkit_cli("services", "--service", "", "--registry", registry))
    for code, out, err in runs:
        assert (code, out) == (2, ""), err
        assert "Traceback" not in err, err
        assert "service name" in err.splitlines()[-1], err  # after argparse's usage
