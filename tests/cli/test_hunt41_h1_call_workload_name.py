"""``meshkit call`` with a workload name ``meshkit certs issue`` cannot issue
(``MESHKIT_WORKLOAD=Orderd``, ``--workload "order d"``, ``--workload cli_1``) and no
certificate of that name said ``<dir>/Orderd.pem is missing; run `meshkit certs init` and
`meshkit certs issue Orderd` (--dir <dir>)``: advice that fails (``workload service names
must be one lowercase DNS label``), and for a name with a blank, unquoted, issues
another name. The message now says the name is no workload name certs can issue,
quoting it; status 2 as before. A valid name's missing file keeps its advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_ops_commands import meshkit_cli

pytestmark = pytest.mark.timeout(60)


async def _certs(directory: Path) -> None:
    """A CA and the workload ``cli`` in ``directory``."""
    for args in (("certs", "init", "--dir", str(directory)),
                 ("certs", "issue", "cli", "--dir", str(directory))):
        status, _, err = await meshkit_cli(*args)
        assert status == 0, err


@pytest.mark.parametrize("name", ["Cli", "c li", "cli_1", "cli/x"],
                         ids=["upper", "blank", "underscore", "slash"])
async def test_a_workload_name_certs_cannot_issue_is_named(tmp_path: Path,
                                                           name: str) -> None:
    """Not 'run meshkit certs issue <name>'."""
    await _certs(tmp_path / "c")
    status, out, err = await meshkit_cli(
        "call", "greeter/SayHello", "{}", "--registry", f"local://{tmp_path}/reg",
        env_extra={"MESHKIT_CERT_DIR": str(tmp_path / "c"), "MESHKIT_WORKLOAD": name})
    assert (status, out) == (2, ""), (status, out, err)
    assert repr(name) in err and "lowercase DNS label" in err, err
    assert f"certs issue {name}" not in err and "Traceback" not in err, err


async def test_a_valid_workload_without_certificate_keeps_its_advice(tmp_path: Path) -> None:
    """``orderd`` was never issued here: run meshkit certs issue orderd."""
    await _certs(tmp_path / "c")
    status, _, err = await meshkit_cli(
        "call", "greeter/SayHello", "{}", "--registry", f"local://{tmp_path}/reg",
        "--cert-dir", str(tmp_path / "c"), "--workload", "orderd")
    assert status == 2, err
    assert "meshkit certs issue orderd" in err, err
