"""The core installs without its extras: what needs one says which, at construction."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
