"""The environment variables meshkit reads in several places, read one way (stdlib only:
``meshkit certs`` and ``meshkit call`` import this before their heavy imports).

A value is stripped of surrounding whitespace, and a blank one is unset, as
``MESHKIT_REGISTRY`` and ``MESHKIT_LOCAL_DIR`` are read (:mod:`meshkit.discovery`): a
trailing newline (a ConfigMap's ``|`` block, a stray blank in an ``.env`` file) would
otherwise end up in a path (``/etc/mesh/certs\\n/ca.pem is missing``).

A number is read by :func:`decimal_number`, every numeric variable the same way: a plain
decimal number as a person writes one (``10``, ``0.5``, ``1e-3``), not the other
spellings Python's ``float()`` takes (``1_0``, non-ASCII digits, ``infinity``, ``nan``).
"""

from __future__ import annotations

import os
import re

__all__ = ["CERT_DIR", "WORKLOAD", "decimal_number", "env_value", "unexpanded_home"]

CERT_DIR = "MESHKIT_CERT_DIR"  # a meshkit certs directory
WORKLOAD = "MESHKIT_WORKLOAD"  # this client's workload name in it


def env_value(name: str) -> str | None:
    """Environment variable ``name`` stripped of surrounding whitespace; ``None`` when it
    is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


#: a plain decimal number: an optional sign, ASCII digits with an optional fraction (``.5``
#: and ``2.`` too), an optional exponent
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def decimal_number(text: str) -> float | None:
    """``text`` (an environment variable's value) as a ``float`` when it is a plain
    decimal number, surrounding whitespace ignored: an optional sign, ASCII digits with
    an optional fraction, an optional exponent (``10``, ``0.5``, ``-1``, ``1e-3``); else
    ``None``. The caller refuses ``None`` with a ConfigError naming its variable and
    quoting the value, and checks the range (a huge exponent reads as ``inf``, out of
    any finite range).

    The digit-group underscores of Python's ``float()`` (``1_0`` is 10 there, PEP 515),
    its non-ASCII digits (``"\\uff11"``, a full-width 1), ``inf``/``infinity``/``nan``
    and hex are refused: most environment parsers do (Go's ``strconv.ParseFloat`` takes
    ``_`` only with a base prefix), and a value such as ``1_0`` is more likely a typo than
    a ten."""
    value = text.strip()
    if not _DECIMAL.fullmatch(value):
        return None
    return float(value)


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
