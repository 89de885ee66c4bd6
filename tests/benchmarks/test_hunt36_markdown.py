"""``--markdown`` (the tables RESULTS.md is made from) says which scenarios failed and
what was skipped, as the printed run does."""

from __future__ import annotations

from benchmarks import report


def test_the_markdown_names_failed_scenarios_and_the_notes() -> None:
    """A run whose ``compare`` scenario failed printed ``FAILED: ...`` and exited 1, but
    its Markdown had no word of it: the targets read 'not measured' and the scenario's
    tables were simply absent (nor were skipped contenders noted)."""
    results = {
        "scenarios": {},
        "targets": report.targets({"scenarios": {}}),
        "errors": {"compare": "WorkerError: cli-hand: exited (1)\nTraceback | last line"},
        "notes": ["contender 'full+mtls' skipped: no TLS material"],
    }
    md = report.markdown(results)
    assert "compare" in md and "WorkerError: cli-hand: exited (1)" in md
    assert "contender 'full+mtls' skipped: no TLS material" in md
    # a failed scenario's message (a worker's log tail follows its first line) is one
    # list item
    line = next(x for x in md.splitlines() if "WorkerError" in x)
    assert line.startswith("* ") and "Traceback" in line


def test_a_clean_run_has_no_failure_section() -> None:
    md = report.markdown({"scenarios": {}, "targets": [], "errors": {}, "notes": []})
    assert "failed" not in md.lower()
