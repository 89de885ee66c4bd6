"""A bad ``MESHKIT_LOG_LEVEL`` in the environment of a ``meshkit`` command (a pod's
``MESHKIT_LOG_LEVEL=verbose`` inherited by ``kubectl exec ... meshkit services``) was
refused as ``meshkit: log level must be one of [...], got 'verbose'``, naming no
variable: the user typed no level. The command read the variable itself and handed its
value to ``configure_logging`` as an argument; the message now names the variable, as
``configure_logging()`` and ``MESHKIT_INLINE_CALLS`` do. Exit status 2 as before."""

from __future__ import annotations

import pytest

from tests.cli.test_ops_commands import meshkit_cli

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("command", ["services", "prometheus-targets", "call"])
async def test_a_bad_log_level_names_its_variable(command: str, tmp_path: object) -> None:
    """Each command that configures logging names ``MESHKIT_LOG_LEVEL`` and its value."""
    args = {"services": ["services"],
            "prometheus-targets": ["prometheus-targets", "--out", f"{tmp_path}/t.json"],
            "call": ["call", "greeter/SayHello", "{}", "--insecure"]}[command]
    status, out, err = await meshkit_cli(*args, "--registry", f"local://{tmp_path}/reg",
                                         env_extra={"MESHKIT_LOG_LEVEL": "verbose"})
    assert (status, out) == (2, ""), (status, out, err)
    assert "MESHKIT_LOG_LEVEL" in err and "'verbose'" in err, err
    assert "Traceback" not in err


async def test_a_padded_log_level_is_still_taken(tmp_path: object) -> None:
    """`` warning `` (surrounding blanks) is WARNING, as before: the command runs."""
    status, out, err = await meshkit_cli("services", "--json", "--registry",
                                         f"local://{tmp_path}/reg",
                                         env_extra={"MESHKIT_LOG_LEVEL": " warning\n"})
    assert (status, out.strip()) == (1, "[]"), (status, out, err)
    assert "MESHKIT_LOG_LEVEL" not in err
