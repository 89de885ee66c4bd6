"""``meshkit demo --help`` offers ``--database-url postgresql://...``. A URL of another
scheme (``mysql://...``) was taken: every process started, each died before READY, and
the demo ended in a Python traceback (``RuntimeError: userd-1 did not start``), as did
any stack whose process did not start (a PostgreSQL URL with a bad port, one that
cannot be reached within the start timeout). Now the scheme is a usage error (status 2,
nothing made, the URL's user info never quoted), and a process that does not start ends
the demo with one message naming it and the end of its log, status 1, every process
stopped, no traceback. No service process is started here."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from examples.ecom import demo

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://app:s3cret@db/shop", id="mysql"),
        pytest.param("sqlite:///tmp/x.db", id="sqlite"),
        pytest.param("db.example:5432", id="no-scheme"),
    ],
)
def test_a_database_url_that_is_not_postgresql_is_a_usage_error(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        demo.main(["--database-url", url])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--database-url" in err and "postgresql://" in err, err
    assert "s3cret" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["postgresql://u@db/shop", "POSTGRES://u@db/shop"])
def test_a_postgresql_url_is_taken(url: str) -> None:
    assert demo.build_parser().parse_args(["--database-url", url]).database_url == url


def test_a_process_that_does_not_start_ends_the_demo_with_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def start(
        self: demo.Stack, service: str, instance_id: str, timeout_s: float = 30.0
    ) -> demo.Proc:
        raise demo.StartError(f"{instance_id} did not start; its log ends with:\nno database")

    monkeypatch.setattr(demo.Stack, "start", start)
    code = demo.main(["--workdir", str(tmp_path / "work"), "--calls", "10"])
    captured = capsys.readouterr()
    assert code == 1
    assert re.search(r"^meshkit demo: [a-z]+-\d did not start", captured.err, re.M), captured.err
    assert "Traceback" not in captured.err + captured.out
