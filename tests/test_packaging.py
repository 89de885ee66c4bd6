"""The core installs without its extras: what needs one says which, at construction."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_BLOCKER = textwrap.dedent('''
    import sys
    class _Block:
        """Hide optional packages as if they were not installed."""
        def __init__(self, names):
            self.names = names
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _Block(set(sys.argv[1].split(","))))
''')


def _run(blocked: str, body: str) -> subprocess.CompletedProcess[str]:
    code = _BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, blocked], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False)


def test_consul_uri_without_py_consul_names_the_extra() -> None:
    """Without py-consul, meshkit imports and runs; a consul:// URI is a ConfigError naming
    meshkit[consul], and importing ConsulRegistry an ImportError saying the same."""
    proc = _run("consul", """
        import meshkit
        from meshkit.errors import ConfigError
        from meshkit.discovery import registry_from_uri
        registry_from_uri("local:///tmp/meshkit-packaging-test")
        try:
            registry_from_uri("consul://127.0.0.1:8500")
        except ConfigError as exc:
            print("config:", exc)
        try:
            from meshkit.discovery import ConsulRegistry
        except ImportError as exc:
            print("import:", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all("meshkit[consul]" in line for line in lines), proc.stdout


def test_messaging_without_nats_py_names_the_extra() -> None:
    """Without nats-py (``pip install meshkit``, no ``[nats]``) ``import
    meshkit.messaging`` raised a bare ``ModuleNotFoundError: No module named
    'nats.errors'``; like ConsulRegistry without py-consul it is an ImportError naming
    the ``meshkit[nats]`` extra, and ``import meshkit`` keeps working."""
    proc = _run("nats", """
        import meshkit
        meshkit.dial, meshkit.serve
        try:
            import meshkit.messaging
        except ImportError as exc:
            print("import:", exc)
        else:
            print("imported")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("import:"), proc.stdout
    assert "meshkit[nats]" in proc.stdout, proc.stdout


def test_redis_storage_without_a_driver_names_the_extra() -> None:
    """Without a Redis driver, memory:// limits work and an async+redis:// storage is a
    ConfigError at RateLimitOptions construction naming meshkit[redis]."""
    proc = _run("redis,coredis,valkey", """
        from meshkit.errors import ConfigError
        from meshkit.resilience import RateLimitOptions
        RateLimitOptions(default_rule="1/second")
        try:
            RateLimitOptions(default_rule="1/second",
                             storage_uri="async+redis://:secret@127.0.0.1:6379")
        except ConfigError as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "meshkit[redis]" in proc.stdout and "secret" not in proc.stdout, proc.stdout


# -- the distributions, built from this checkout ------------------------------------------
@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and, built from it, the wheel (offline: ``python -m build
    --no-isolation``)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                           str(out), str(REPO)], capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_license_is_in_the_repo_the_sdist_and_the_wheel(dists: Path) -> None:
    """LICENSE holds the Apache-2.0 text that pyproject names; it ships in both
    distributions and the wheel's metadata names it."""
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    (sdist,) = dists.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        assert tar.extractfile(f"{sdist.name[:-7]}/LICENSE").read().decode() == text  # type: ignore[union-attr]
    (wheel,) = dists.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (lic,) = [n for n in names if n.endswith("/licenses/LICENSE")]
        assert whl.read(lic).decode() == text
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(meta).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata


def test_sdist_holds_the_library_and_no_stray_tests(dists: Path) -> None:
    """The sdist has meshkit/, LICENSE, README and pyproject, and nothing from tests/,
    examples/ or benchmarks/ (which need a checkout); the wheel has meshkit only."""
    (sdist,) = dists.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tops = {n.split("/")[1] for n in tar.getnames() if n.count("/") >= 1}
    assert tops <= {"meshkit", "meshkit.egg-info", "LICENSE", "README.md", "pyproject.toml",
                    "PKG-INFO", "setup.cfg", "MANIFEST.in"}, tops
    assert {"meshkit", "LICENSE", "README.md", "pyproject.toml"} <= tops
    (wheel,) = dists.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        assert {n.split("/")[0] for n in whl.namelist()} == {
            "meshkit", f"{wheel.name.split('-py3')[0]}.dist-info"}


def test_both_distributions_ship_the_admin_dashboard_page(dists: Path) -> None:
    """The admin server's dashboard page (package data beside its module) is in the sdist
    and the wheel, byte for byte as in the checkout."""
    page = (REPO / "meshkit/observability/dashboard.html").read_bytes()
    (sdist,) = dists.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"{sdist.name[:-7]}/meshkit/observability/dashboard.html")
        assert member is not None and member.read() == page
    (wheel,) = dists.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        assert whl.read("meshkit/observability/dashboard.html") == page


def test_installed_wheel_explains_demo_and_bench(dists: Path, tmp_path: Path) -> None:
    """From the installed wheel (no checkout around it), ``meshkit --help`` lists the
    operator commands but not demo/bench and says where they run; ``meshkit demo`` exits
    with that explanation instead of a traceback."""
    (wheel,) = dists.glob("*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, timeout=120,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import sys; from meshkit.cli import main; sys.exit(main(sys.argv[1:]))"

    def meshkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    where = subprocess.run([sys.executable, "-c", "import meshkit; print(meshkit.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                           check=True)
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel, not the checkout
    usage = meshkit("--help")
    assert usage.returncode == 0, usage.stderr
    assert "services" in usage.stdout and "prometheus-targets" in usage.stdout
    assert "{services,call,prometheus-targets,certs,version}" in usage.stdout
    assert "demo and bench run from a source checkout" in usage.stdout
    demo = meshkit("demo")
    assert demo.returncode == 1 and "Traceback" not in demo.stderr
    assert "runs from a source checkout" in demo.stderr and "make demo" in demo.stderr


def test_readme_greeter_runs_as_written(tmp_path: Path) -> None:
    """The README's stand-alone Greeter (greeter.proto + greeter.py, no examples/ import)
    runs as written and prints the reply."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### A Greeter, stand-alone", 1)[1].split("\n### ", 1)[0]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S))
    assert set(blocks) == {"proto", "python"}
    assert "examples" not in blocks["python"]
    (tmp_path / "greeter.proto").write_text(blocks["proto"])
    (tmp_path / "greeter.py").write_text(blocks["python"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "greeter.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Hello, mesh!\n"
