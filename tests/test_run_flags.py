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
