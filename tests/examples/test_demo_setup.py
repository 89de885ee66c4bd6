"""The demo's set-up (examples/ecom/demo.py) in this process: its certificates, and a run
in a ``--workdir`` an earlier run used. No service process is started here (the demo on
real processes is tests/integration/test_demo.py)."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import pytest

from examples.ecom import demo
from meshkit.auth import init_ca_dir, load_certificate

pytestmark = pytest.mark.timeout(30)


class Reached(Exception):
    """The run got past its set-up to starting processes (none are started here)."""


async def run_until_start(args: argparse.Namespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the demo with ``args`` until it starts its first process."""
    async def start(self: demo.Stack, service: str, instance_id: str,
                    timeout_s: float = 30.0) -> demo.Proc:
        raise Reached(instance_id)

    monkeypatch.setattr(demo.Stack, "start", start)
    with pytest.raises(Reached):
        await asyncio.wait_for(demo.run(args), 10)


async def test_a_run_in_a_used_workdir_reuses_its_ca(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workdir DIR`` holding an earlier run's CA (kept, as a given workdir is): the
    run gets past its set-up with that same CA and fresh workload certificates, instead of
    a KeyExistsError traceback."""
    cert_dir = demo.make_certificates(tmp_path / "certs")  # the earlier run's
    ca = (cert_dir / "ca.pem").read_bytes()
    old = load_certificate(cert_dir / "orderd.pem")
    args = demo.build_parser().parse_args(
        ["--calls", "10", "--no-kill", "--workdir", str(tmp_path)])
    await run_until_start(args, monkeypatch)
    assert (cert_dir / "ca.pem").read_bytes() == ca
    assert load_certificate(cert_dir / "orderd.pem").serial_number != old.serial_number


async def test_a_relative_workdir_gets_an_absolute_registry_uri(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``meshkit demo --workdir run`` (a relative directory): the demo wrote its registry
    URI as ``local://run/registry``, which the local registry now refuses (a relative
    path resolves against each process's working directory), so the run ended with a
    ConfigError. The workdir is made absolute first."""
    monkeypatch.chdir(tmp_path)
    seen: list[str] = []
    real = demo.Stack.__init__

    def init(self: demo.Stack, workdir: Path, registry_uri: str, *rest: object) -> None:
        seen.append(registry_uri)
        real(self, workdir, registry_uri, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(demo.Stack, "__init__", init)
    args = demo.build_parser().parse_args(["--calls", "10", "--no-kill", "--workdir", "run"])
    await run_until_start(args, monkeypatch)
    assert seen and seen[0].startswith(f"local://{tmp_path / 'run' / 'registry'}?"), seen


@pytest.mark.parametrize("problem", ["foreign trust domain", "unreadable", "no key"])
def test_an_unusable_ca_in_the_workdir_ends_with_what_to_do(tmp_path: Path,
                                                             problem: str) -> None:
    """A CA the demo cannot use in ``DIR/certs`` ends the run with a message saying why
    and what to do (no traceback); the files are left as they were."""
    cert_dir = tmp_path / "certs"
    if problem == "foreign trust domain":
        init_ca_dir(cert_dir, trust_domain="other.test", ttl_days=1)
    else:
        cert_dir.mkdir()
        (cert_dir / "ca.pem").write_text("not a certificate\n" if problem == "unreadable"
                                         else "")
        if problem == "no key":
            init_ca_dir(tmp_path / "ca", trust_domain="meshkit.local", ttl_days=1)
            (cert_dir / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    before = {f.name: f.read_bytes() for f in cert_dir.iterdir()}
    with pytest.raises(SystemExit) as info:
        demo.make_certificates(cert_dir)
    message = str(info.value.code)
    assert f"cannot use the CA in {cert_dir}" in message
    assert f"Delete {cert_dir}" in message and "--workdir" in message
    assert {f.name: f.read_bytes() for f in cert_dir.iterdir()} == before


@pytest.mark.parametrize("argv", [["--calls", "5"], ["--concurrency", "0"],
                                  ["--calls", "many"]])
def test_a_bad_calls_or_concurrency_is_a_usage_error_that_creates_nothing(
        argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``meshkit demo --calls 5`` (fewer than the 10 the demo needs) or
    ``--concurrency 0`` exited with status 1 and left an empty ``meshkit-demo-*``
    directory in $TMPDIR each time: the workdir was made before the check. They are now
    usage errors like ``--calls many``: status 2, argparse's message, nothing made."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


async def test_the_database_url_reaches_the_services_by_environment_not_argv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``meshkit demo --database-url postgresql://app:PASSWORD@...`` passed the URL to each
    service as ``--db URL``: the password in every service's command line, which any
    local user reads (``ps``, /proc/PID/cmdline) for as long as the stack runs. It goes in
    the services' DATABASE_URL (their --db default) instead."""
    url = "postgresql://app:s3cret-pw@127.0.0.1:5432/shop"
    seen: dict[str, object] = {}

    async def exec_(*argv: str, env: dict[str, str], **kw: object) -> None:
        seen.update(argv=argv, env=env)
        raise Reached("exec")

    monkeypatch.setattr(demo.asyncio, "create_subprocess_exec", exec_)
    stack = demo.Stack(tmp_path, f"local://{tmp_path / 'registry'}", url, None)
    with pytest.raises(Reached):
        await stack.start("userd", "userd-1")
    assert not any("s3cret" in a for a in seen["argv"]), seen["argv"]  # type: ignore[attr-defined]
    assert seen["env"]["DATABASE_URL"] == url  # type: ignore[index]
