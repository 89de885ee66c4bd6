"""``meshkit help COMMAND`` printed the top-level usage and exited 0 whatever COMMAND was:
``meshkit help call`` never showed ``call``'s options, and ``meshkit help frobnicate``
was no error. Now ``help COMMAND`` is ``COMMAND --help`` (its usage on stdout, status 0),
an unknown COMMAND the usage error an unknown command is (status 2, stderr), and ``help``
alone the top-level usage as before."""

from __future__ import annotations

import pytest

from meshkit.cli import main


@pytest.mark.parametrize(("command", "usage"), [
    ("call", "usage: meshkit call"), ("services", "usage: meshkit services"),
    ("prometheus-targets", "usage: meshkit prometheus-targets"),
    ("certs", "usage: meshkit certs"), ("version", "usage: meshkit version")])
def test_help_command_is_its_help(capsys: pytest.CaptureFixture[str], command: str,
                                  usage: str) -> None:
    """The command's own usage on stdout, status 0."""
    assert _status(["help", command]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(usage), out[:200]
    assert err == ""


def test_help_of_an_unknown_command_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Status 2, the command named on stderr, stdout empty."""
    assert _status(["help", "frobnicate"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "'frobnicate'" in err


def test_help_alone_is_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """As before: the top-level usage on stdout, status 0."""
    assert main(["help"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("usage: meshkit {")


def _status(argv: list[str]) -> int:
    """``main(argv)``'s status, also when argparse ends ``--help`` with SystemExit (as
    ``meshkit call --help`` does through :func:`meshkit.cli.main`)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
