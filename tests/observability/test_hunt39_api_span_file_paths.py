"""JsonLinesSpanExporter(path) and load_spans(paths) given a path that is no path fail
with ConfigError naming it: JsonLinesSpanExporter(None) (``os.environ.get`` of an unset
variable) raised a bare ``TypeError``, ``""`` (pathlib's current directory) a bare
``IsADirectoryError``; load_spans(None) ``TypeError: 'NoneType' object is not
iterable``, and load_spans(b"/var/log/spans.jsonl") read the bytes as a sequence of
numbers (``TypeError ... not int``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import JsonLinesSpanExporter, load_spans

pytestmark = pytest.mark.timeout(60)

_BAD = {"none": None, "bytes": b"/var/log/spans.jsonl", "int": 3, "empty": ""}


@pytest.mark.parametrize("value", sorted(_BAD))
def test_the_exporter_refuses_a_path_that_is_no_path(value: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        JsonLinesSpanExporter(_BAD[value])  # type: ignore[arg-type]
    assert "path" in str(caught.value)


@pytest.mark.parametrize("value", ["none", "bytes", "int"])
def test_load_spans_refuses_paths_that_are_no_paths(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_spans(_BAD[value])  # type: ignore[arg-type]
    assert "paths" in str(caught.value)
    with pytest.raises(ConfigError):
        load_spans(["/nonexistent/spans.jsonl", _BAD[value]])  # type: ignore[list-item]


def test_paths_still_work(tmp_path: Path) -> None:
    exporter = JsonLinesSpanExporter(tmp_path / "spans.jsonl")
    exporter.shutdown()
    assert load_spans(tmp_path / "spans.jsonl") == []
    assert load_spans(str(tmp_path / "missing.jsonl")) == []  # missing: skipped
    assert load_spans([tmp_path / "spans.jsonl", tmp_path / "missing.jsonl"]) == []
