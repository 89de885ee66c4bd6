"""``meshkit`` with no command: a usage error, whose usage text goes to stderr."""

from __future__ import annotations

import pytest

from tests.cli.test_ops_commands import at_once, meshkit_cli

pytestmark = pytest.mark.timeout(60)


async def test_no_command_is_a_usage_error_on_stderr() -> None:
    """``meshkit`` alone printed its usage on stdout and exited 2: a script's
    ``out=$(meshkit ...)`` with the command missing (an empty variable) took the usage
    text for the command's output. Like argparse's usage errors and ``meshkit
    frobnicate``, it now goes to stderr, stdout left empty; asked for (``--help``,
    ``help``) it is the output: stdout, exit 0."""
    bare, unknown, helped, help_word = await at_once(
        meshkit_cli(), meshkit_cli("frobnicate"), meshkit_cli("--help"), meshkit_cli("help"))
    for code, out, err in (bare, unknown):
        assert (code, out) == (2, ""), (code, out, err)
        assert "usage: meshkit" in err, err
    for code, out, err in (helped, help_word):
        assert (code, err) == (0, ""), (code, out, err)
        assert out.startswith("usage: meshkit"), out
