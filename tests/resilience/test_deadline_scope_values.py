"""``deadline_scope`` refuses a deadline that is no number of seconds, naming it.

What was wrong: ``deadline_scope(True)`` (a flag passed where the deadline goes) was
taken as the monotonic time 1 (``min(True, ...)`` is ``True``): ``current_deadline()``
returned ``True`` and every mesh call in the block failed ``DEADLINE_EXCEEDED`` at once,
unsent, with nothing naming the cause; a string or bytes raised a bare ``TypeError``
("'<' not supported between instances of 'float' and 'str'") only when the block was
entered.
"""

from __future__ import annotations

import math
import time

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience import current_deadline, deadline_scope


@pytest.mark.parametrize("deadline", [True, False, "5", b"1", [1.0]])
def test_a_deadline_that_is_no_number_is_refused(deadline: object) -> None:
    with pytest.raises(ConfigError, match="deadline") as info:
        deadline_scope(deadline)  # type: ignore[arg-type]
    assert repr(deadline) in str(info.value)


@pytest.mark.parametrize("deadline", [None, math.nan, math.inf, 0, 12.5])
def test_numbers_and_none_are_taken(deadline: float | None) -> None:
    with deadline_scope(deadline):
        got = current_deadline()
    if deadline is None or deadline != deadline:
        assert got is None
    elif deadline == math.inf:
        assert got is not None and got > time.monotonic() + 86_000
    else:
        assert got == deadline
