"""``write_access`` queues a JSON access record as ``BufferedLineWriter.add`` does (its
common case inline): batched while a timer is armed on a running loop and room is left,
written at once when the buffer is full or no loop runs, a timer armed again on a new loop
once the loop that held it has stopped."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest

from meshkit.observability._logging import (
    BufferedLineWriter,
    _AccessLog,
    _AccessWriter,
    write_access,
)


def _fields(n: int) -> dict[str, object]:
    return {"n": n}


def _written(out: io.StringIO) -> list[int]:
    return [json.loads(line)["n"] for line in out.getvalue().splitlines()]


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    writer = BufferedLineWriter(stream, flush_interval_s=30, max_buffer_bytes=65536)
    monkeypatch.setattr(_AccessLog, "logger", _AccessWriter(writer, 20))
    return stream


def _writer() -> BufferedLineWriter:
    lg = _AccessLog.logger
    assert isinstance(lg, _AccessWriter)
    return lg._writer


def test_records_wait_for_the_batch_on_a_running_loop(out: io.StringIO) -> None:
    async def main() -> None:
        for n in range(3):
            write_access(False, _fields, (n,))
        assert out.getvalue() == "" and len(_writer()._buf) == 3 and _writer()._timer

    asyncio.run(main())
    _writer().flush()
    assert _written(out) == [0, 1, 2]


def test_a_full_buffer_is_written_at_once(out: io.StringIO) -> None:
    async def main() -> None:
        write_access(False, _fields, (0,))  # arms the timer
        _writer()._max = _writer()._size  # full from now on
        write_access(True, _fields, (1,))
        assert _written(out) == [0, 1] and not _writer()._buf

    asyncio.run(main())


def test_outside_a_loop_a_record_is_written_at_once(out: io.StringIO) -> None:
    done = threading.Event()

    def worker() -> None:
        write_access(False, _fields, (7,))
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert done.is_set() and _written(out) == [7]


def test_a_timer_of_a_stopped_loop_is_armed_again_on_the_next(out: io.StringIO) -> None:
    async def first() -> None:
        write_access(False, _fields, (0,))

    async def second() -> asyncio.AbstractEventLoop | None:
        write_access(False, _fields, (1,))
        return _writer()._timer_loop

    asyncio.run(first())  # its timer never fires: the loop ended
    with asyncio.Runner() as runner:
        held = runner.run(second())
        assert held is runner.get_loop()
    assert out.getvalue() == ""
    _writer().flush()
    assert _written(out) == [0, 1]
