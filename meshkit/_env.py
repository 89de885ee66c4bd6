"""The environment variables meshkit reads in several places, read one way (stdlib only:
``meshkit certs`` and ``meshkit call`` import this before their heavy imports).

A value is stripped of surrounding whitespace, and a blank one is unset, as
``MESHKIT_REGISTRY`` and ``MESHKIT_LOCAL_DIR`` are read (:mod:`meshkit.discovery`): a
trailing newline (a ConfigMap's ``|`` block, a stray blank in an ``.env`` file) would
otherwise end up in a path (``/etc/mesh/certs\\n/ca.pem is missing``).
"""

from __future__ import annotations

import os

__all__ = ["CERT_DIR", "WORKLOAD", "env_value", "unexpanded_home"]

CERT_DIR = "MESHKIT_CERT_DIR"  # a meshkit certs directory
WORKLOAD = "MESHKIT_WORKLOAD"  # this client's workload name in it


def env_value(name: str) -> str | None:
    """Environment variable ``name`` stripped of surrounding whitespace; ``None`` when it
    is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def unexpanded_home(path: str) -> str | None:
    """The path ``path`` stands for when it starts with a ``~`` a shell would have expanded
    (``~``, ``~/certs``, ``~user/x`` of a user there is: ``os.path.expanduser``'s result),
    else ``None``. Such a value reached meshkit unexpanded (an environment file, a systemd
    unit, a quoted value, ``--opt=~/x``, where bash leaves it as written): taken as
    written it is a relative path under a directory named ``~`` in the working
    directory, not the home directory it reads as."""
    if not path.startswith("~"):
        return None
    home = os.path.expanduser(path)
    if home != path or path == "~" or path.startswith("~/"):
        return home
    return None
