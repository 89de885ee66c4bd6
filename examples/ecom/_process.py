"""Command-line plumbing shared by the two service processes."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

import meshkit
from examples.ecom.storage import Store, StoreError, StoreUnavailable, open_store
from meshkit._env import decimal_number
from meshkit.auth import AuthOptions, TLSOptions, tls_from_dir
from meshkit.observability import AdminOptions, configure_logging
from meshkit.resilience import RateLimitOptions

_log = structlog.get_logger("examples.ecom.process")


def setup_logging() -> None:
    """JSON logs on stderr at MESHKIT_LOG_LEVEL (default INFO)."""
    configure_logging()


def _bad(text: str, what: str, env: str | None) -> argparse.ArgumentTypeError:
    where = f" (the flag or env {env})" if env else ""
    return argparse.ArgumentTypeError(f"must be {what}, got {text!r}{where}")


def _digits(text: str, *, plus: bool = False) -> int | None:
    """``text`` as an ``int`` when it is ASCII digits (blanks around ignored; a leading
    ``+`` too when ``plus``; at most 18 digits after leading zeros: ``int()`` of over
    4,300 raises), else ``None``."""
    value = text.strip()
    if plus and value.startswith("+"):
        value = value[1:]
    if not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > 18:
        return None
    return int(value)


def port_arg(env: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a TCP port, 0..65535 (0 picks a free one). ``env`` names the
    variable the flag's default comes from, for the message: a default given as a string
    (``default=os.environ.get(...)``) is converted by argparse too, so a bad value in the
    environment is a usage error naming the flag and the variable (exit 2), not a
    ``ValueError`` traceback when the parser is built (then even ``--help`` failed).
    ASCII digits only, blanks around ignored, as the library reads ``MESHKIT_ADMIN_PORT``
    (not ``int()``'s ``5_0051`` or full-width digits)."""

    def port(text: str) -> int:
        value = _digits(text)
        if value is None or not 0 <= value <= 65535:
            raise _bad(text, "a port number, 0..65535", env)
        return value

    return port


def seconds_arg(env: str | None = None, *, zero: bool = True,
                least: float = 0.0) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of seconds, >= 0 (> 0 unless ``zero``; at
    least ``least`` when given); NaN and infinity refused. A plain decimal number, as
    the library reads ``MESHKIT_*`` numbers (:func:`meshkit._env.decimal_number`: not
    ``float()``'s ``1_0`` or full-width digits). ``env`` as for :func:`port_arg`."""
    what = "a finite number of seconds" + (f", >= {least:g}" if least > 0
                                           else ", >= 0" if zero else ", > 0")

    def seconds(text: str) -> float:
        value = decimal_number(text)
        if value is None or not math.isfinite(value) or value < least or value < 0 \
                or (value == 0 and not zero):
            raise _bad(text, what, env)
        return value

    return seconds


def count_arg(low: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``, ASCII digits (a leading ``+`` taken,
    blanks around ignored; not ``int()``'s ``1_0`` or full-width digits)."""

    def count(text: str) -> int:
        value = _digits(text, plus=True)
        if value is None or value < low:
            raise _bad(text, f"an integer >= {low}", None)
        return value

    return count


class StoreNotOpened(StoreUnavailable):
    """The store could not be reached within the start's wait (``--db-wait-s``); its
    message is the one line to end the process with (``cannot open the store within
    N s: <cause>``, never the URL's password): :func:`run_service` ends with it,
    status 1, no traceback."""


def _store_failure(exc: BaseException) -> str:
    """``exc`` (a store's failure) and its cause, on one line: the store's own messages
    and the database driver's never quote the URL's password."""
    cause = exc.__cause__
    return f"{exc}: {type(cause).__name__}: {cause}" if cause else str(exc)


async def open_store_waiting(url: str, wait_s: float) -> Store:
    """:func:`~examples.ecom.storage.open_store`, tried again every second while the
    database cannot be reached (:class:`~examples.ecom.storage.StoreUnavailable`), for up
    to ``wait_s`` seconds, then :class:`StoreNotOpened` (a ``StoreUnavailable``) is
    raised naming the last failure's cause, logged as ``store cannot be opened``; one
    warning when the first attempt fails (``store unavailable at start, retrying``) and
    one info line once open.

    Once open, a store reconnects by itself; at the start there was no store yet, and a
    service exited at once: a stack applied together, its database still starting, began
    in Kubernetes' CrashLoopBackOff, whose delays (up to 5 minutes) outlasted the
    database's start. Other failures (a bad URL, authentication refused, a missing
    database) end the process at once: ``store cannot be opened`` logged with the cause
    (the database's own message, e.g. ``role "app" does not exist``; never the URL's
    password) and :class:`SystemExit` with one line naming it (status 1, no traceback:
    a traceback's last line, all ``meshkit demo`` shows of a service's log, named no
    cause).

    An attempt gets what is left of ``wait_s`` (at least a second): one at a database
    that takes connections and never answers ran to the store's own connect timeout
    (5 s), past the wait (and past a startup probe sized to it)."""
    deadline = time.monotonic() + wait_s
    warned = False
    while True:
        try:
            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    store = await open_store(url)
            except TimeoutError:  # ours: the store maps its own timeouts
                raise StoreUnavailable(f"the store did not open within {wait_s} s") from None
        except StoreUnavailable as exc:
            if time.monotonic() + 1.0 > deadline:  # waited enough: say why, once
                why = _store_failure(exc)
                _log.error("store cannot be opened", cause=why, wait_s=wait_s)
                raise StoreNotOpened(
                    f"cannot open the store within {wait_s:g} s: {why}") from exc
            if not warned:
                warned = True
                cause = exc.__cause__
                _log.warning("store unavailable at start, retrying", wait_s=wait_s,
                             cause=f"{type(cause).__name__}: {cause}" if cause else str(exc))
            await asyncio.sleep(1.0)
            continue
        except (StoreError, ValueError) as exc:  # waiting cannot fix it: say why, once
            why = _store_failure(exc)
            _log.error("store cannot be opened", cause=why)
            raise SystemExit(f"cannot open the store: {why}") from None
        if warned:
            _log.info("store available")
        return store


def run_service(module: str, main: Coroutine[Any, Any, None]) -> None:
    """Run a service process's ``main()`` (:func:`meshkit.run`: on uvloop when installed);
    a :class:`~meshkit.errors.ConfigError` it raises (a bad ``--host``, a ``--cert-dir``
    without the certificates, an unknown cache or rate-limit storage URI: meshkit's
    message quotes the bad value, never a secret) is logged (``bad configuration``) and
    ends the process with that message on one line, ``python -m <module>: ...``, status
    1, instead of a traceback of a dozen frames.

    Raises:
        SystemExit: the configuration error's line (status 1).
    """
    from meshkit.errors import ConfigError

    try:
        meshkit.run(main)
    except StoreNotOpened as exc:  # logged already: "store cannot be opened"
        raise SystemExit(str(exc)) from None
    except ConfigError as exc:
        _log.error("bad configuration", error=str(exc))
        raise SystemExit(f"python -m {module}: {exc}") from None


def parser(service: str, default_db: str) -> argparse.ArgumentParser:
    """The common arguments of a service process (registry comes from MESHKIT_REGISTRY)."""
    p = argparse.ArgumentParser(prog=f"python -m examples.ecom.{service}")
    p.add_argument("--instance-id", default=None, help="registry instance id")
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=port_arg(), default=0, help="port (0 picks a free one)")
    p.add_argument("--advertise-host", default=os.environ.get("MESHKIT_ADVERTISE_HOST") or None,
                   help="host put in the registry (env MESHKIT_ADVERTISE_HOST; default --host,"
                        " or the host name when binding all interfaces); in Kubernetes the"
                        " pod IP")
    # blank is unset, as the library's ServeOptions.admin reads it
    p.add_argument("--admin-host",
                   default=os.environ.get("MESHKIT_ADMIN_HOST", "").strip() or "127.0.0.1",
                   help="admin server (/metrics, /livez, /readyz) bind address (env"
                        " MESHKIT_ADMIN_HOST; 0.0.0.0 for probes and a remote Prometheus)")
    p.add_argument("--admin-port", type=port_arg("MESHKIT_ADMIN_PORT"),
                   default=os.environ.get("MESHKIT_ADMIN_PORT") or "0",
                   help="admin server port (env MESHKIT_ADMIN_PORT; 0 picks a free one)")
    p.add_argument("--db", default=os.environ.get("DATABASE_URL", "").strip() or default_db,
                   help="sqlite:///file.db or postgresql://... (env DATABASE_URL)")
    p.add_argument("--db-wait-s", type=seconds_arg("ECOM_DB_WAIT_S"),
                   default=os.environ.get("ECOM_DB_WAIT_S") or "60",
                   help="how long to wait at the start for a database that cannot be"
                        " reached (env ECOM_DB_WAIT_S; default 60, the deploy/k8s startup"
                        " probe's allowance)")
    p.add_argument("--cert-dir", default=os.environ.get("MESHKIT_CERT_DIR"),
                   help="meshkit certs directory (env MESHKIT_CERT_DIR)")
    p.add_argument("--jwt-dir", default=os.environ.get("MESHKIT_JWT_DIR"),
                   help="JWT signing keys directory (env MESHKIT_JWT_DIR; "
                        "default <cert-dir>/jwt)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext instead of mTLS (asked for explicitly)")
    p.add_argument("--grace-s", type=seconds_arg(), default=5.0,
                   help="drain grace for in-flight calls")
    p.add_argument("--drain-delay-s", type=seconds_arg(), default=0.5,
                   help="delay between deregistering and refusing new calls")
    return p


def tls(args: argparse.Namespace, service: str) -> TLSOptions | None:
    """The service's TLS options, or ``None`` with ``--insecure``."""
    return tls_from_dir(args.cert_dir, service, insecure=args.insecure)


def jwt_dir(args: argparse.Namespace) -> Path:
    """Where the JWT signing keys live."""
    if args.jwt_dir:
        return Path(args.jwt_dir)
    if args.cert_dir:
        return Path(args.cert_dir) / "jwt"
    raise SystemExit("give --jwt-dir (or --cert-dir) so all instances share signing keys")


def serve_options(args: argparse.Namespace, tls_options: TLSOptions | None,
                  auth: AuthOptions | None = None, rate_limit: RateLimitOptions | None = None,
                  meta: dict[str, str] | None = None) -> meshkit.ServeOptions:
    """ServeOptions from the parsed arguments, with the service's ``auth`` and
    ``rate_limit``; serve() puts them in its one chain order (deadline admission is on by
    default)."""
    return meshkit.ServeOptions(
        host=args.host, port=args.port, advertise_host=args.advertise_host,
        instance_id=args.instance_id,
        admin=AdminOptions(host=args.admin_host, port=args.admin_port),
        grace_s=args.grace_s, drain_delay_s=args.drain_delay_s,
        meta={"version": "v1", **(meta or {})},
        tls=tls_options, insecure=tls_options is None, auth=auth, rate_limit=rate_limit,
    )


def announce(server: meshkit.MeshServer) -> None:
    """Print the line the demo driver waits for."""
    assert server.instance is not None
    print(f"READY {server.instance.instance_id} {server.instance.address}", flush=True)
