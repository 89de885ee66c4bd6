"""``meshkit version`` takes no arguments. It printed the version and exited 0 whatever
followed it: ``meshkit version --json`` or a typo (``meshkit version --short``) was
silently ignored, and ``meshkit version --help`` printed the version instead of a usage.
Now ``--help``/``-h`` prints its usage on stdout (status 0) and anything else is a usage
error: the usage and the argument on stderr, nothing on stdout, status 2, as every other
command's bad flag."""

from __future__ import annotations

import pytest

from meshkit import __version__
from meshkit.cli import main


def test_version_alone_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """No argument: the version on stdout, status 0."""
    assert main(["version"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"{__version__}\n", "")


@pytest.mark.parametrize("extra", [["--json"], ["--short"], ["x"], ["-v", "y"]],
                         ids=["json", "short", "word", "two"])
def test_an_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                      extra: list[str]) -> None:
    """Status 2, stdout empty, stderr names the argument."""
    assert main(["version", *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: meshkit version" in err and repr(extra[0]) in err


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_usage(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    """--help: the usage on stdout, status 0, not the version."""
    assert main(["version", flag]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: meshkit version") and err == ""
