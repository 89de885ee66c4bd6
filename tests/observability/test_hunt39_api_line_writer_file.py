"""BufferedLineWriter(file) refuses a file that is no text stream, as its docstring says
of values of the wrong type: a path given for the stream (``BufferedLineWriter(
"/var/log/access.log")``) was taken, and then every line raised ``AttributeError: 'str'
object has no attribute 'write'`` into whoever logged (with flush_interval_s=0), or in
the flush timer's callback."""

from __future__ import annotations

import io

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import BufferedLineWriter

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value", ["a-path", "bytes", "true", "the-class"])
def test_a_file_that_is_no_stream_is_a_config_error(value: str) -> None:
    bad = {"a-path": "/var/log/access.log", "bytes": b"/var/log/access.log", "true": True,
           "the-class": io.StringIO}[value]
    with pytest.raises(ConfigError) as caught:
        BufferedLineWriter(bad, flush_interval_s=0)  # type: ignore[arg-type]
    assert "file" in str(caught.value)


def test_a_stream_and_none_still_work() -> None:
    out = io.StringIO()
    writer = BufferedLineWriter(out, flush_interval_s=0)
    writer.msg("hello")
    assert out.getvalue() == "hello\n"
    BufferedLineWriter(None)
