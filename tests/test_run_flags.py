"""``meshkit.run``'s flags are checked before anything runs: ``use_uvloop`` and ``debug``
take ``None``, ``True`` or ``False``; anything else (a string from the environment, ``0``)
is a ConfigError quoting it, and the coroutine is closed, not run."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import meshkit


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize("bad", [0, 1, "no", "false", "0", 2.0])
def test_a_use_uvloop_that_is_no_flag_is_refused(bad: object) -> None:
    """``run(main(), use_uvloop=0)`` ran on uvloop (only ``False`` kept asyncio's loop)
    and ``use_uvloop="no"`` too, silently; both now raise ConfigError quoting the value,
    with the coroutine closed (no "never awaited" warning)."""
    coro = _loop_module()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(meshkit.ConfigError, match=repr(bad).replace(".", r"\.")):
            meshkit.run(coro, use_uvloop=bad)  # type: ignore[arg-type]
    assert coro.cr_frame is None  # closed


@pytest.mark.parametrize("bad", [0, "yes", "false"])
def test_a_debug_that_is_no_flag_is_refused(bad: object) -> None:
    """``run(main(), debug="false")`` turned asyncio's debug mode on (a truthy string);
    now a ConfigError quoting it, the coroutine closed."""
    coro = _loop_module()
    with pytest.raises(meshkit.ConfigError, match=repr(bad)):
        meshkit.run(coro, debug=bad)  # type: ignore[arg-type]
    assert coro.cr_frame is None


def test_the_flags_still_take_none_true_and_false() -> None:
    """``None``, ``True`` and ``False`` work as before."""
    assert meshkit.run(_loop_module(), use_uvloop=False, debug=False).startswith("asyncio")
    assert meshkit.run(_loop_module(), use_uvloop=None, debug=None)
    assert meshkit.run(_loop_module(), use_uvloop=False, debug=True).startswith("asyncio")


async def test_run_from_a_running_loop_is_refused_and_leaves_that_loop_alone() -> None:
    """``meshkit.run()`` called from a running event loop raises RuntimeError saying so
    before it makes a loop, as :func:`asyncio.run` does, with the coroutine closed: it
    made and set a new loop first, so the error was the loop's "Cannot run the event
    loop while another loop is running" from shutting that one down, the coroutine was
    never awaited (a RuntimeWarning), and the thread's current event loop was left
    unset (``get_event_loop_policy().get_event_loop()`` then raised)."""
    import gc

    policy = asyncio.get_event_loop_policy()
    before = policy.get_event_loop()
    coro = _loop_module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="running event loop"):
            meshkit.run(coro, use_uvloop=False)
        gc.collect()
    assert coro.cr_frame is None  # closed
    assert [str(w.message) for w in caught
            if issubclass(w.category, RuntimeWarning)] == []
    assert policy.get_event_loop() is before
