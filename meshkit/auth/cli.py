"""``meshkit certs``: make a mesh CA, issue workload certificates, inspect certificates.

Usage::

    meshkit certs init    [--dir D] [--trust-domain T] [--ttl-days N] [--permit-dns NAME]...
                          [--force]
    meshkit certs issue   <service> [--dir D] [--ttl-h N] [--dns NAME]... [--ip ADDR]...
                          [--force]
    meshkit certs inspect <file>

``--dir`` defaults to ``$MESHKIT_CERT_DIR``, else ``./certs`` (an empty or blank one is
a usage error, not the working directory). Keys are written 0600; no
key or certificate (``ca.pem`` included: a host holding only the trust bundle) is
overwritten without ``--force`` (renewal: ``issue <service> --force``; running servers
pick the new certificate up within their ``reload_interval_s``; the files replaced keep
their owner, group and mode, a key never readable by others).

``inspect`` prints every certificate of the file, the control characters of its names
escaped as Python's ``repr`` writes them (``\\x1b``: a certificate's subject never acts
on the terminal); one with malformed extensions (which
cryptography cannot read) ends it with exit code 1 and one line naming the file, the
certificate's place in it and the error.

``--ttl-days`` and ``--ttl-h`` take a validity of at least an hour (a shorter one is a
usage error: the certificate would have expired by the time it is used).

Exit codes: 0 done, 1 refused or failed (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from meshkit._cli._common import positive_number
from meshkit._env import CERT_DIR, env_value

__all__ = ["main"]

# meshkit.auth.DEFAULT_TRUST_DOMAIN, spelled out so that ``--help`` and a usage error
# import neither cryptography nor grpc (tests/cli/test_cli_startup.py checks it is the
# same); the certificate machinery is imported in main() once the arguments parse.
DEFAULT_TRUST_DOMAIN = "meshkit.local"

MIN_VALIDITY_H = 1.0
"""The shortest validity ``--ttl-days`` and ``--ttl-h`` take, hours: a certificate of less
(``--ttl-days 1e-6``: 0.09 s) has expired, or nearly, when a server first reads it."""


def _validity(unit: str, hours_per_unit: float) -> Callable[[str], float]:
    """An argparse ``type`` for a certificate's validity in ``unit``: a positive finite
    number (:func:`~meshkit._cli._common.positive_number`) of at least
    :data:`MIN_VALIDITY_H` hours.

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it, quoted, exit 2).
    """
    positive = positive_number(unit)

    def parse(text: str) -> float:
        value = positive(text)
        if value * hours_per_unit < MIN_VALIDITY_H:
            minimum = f"{MIN_VALIDITY_H / hours_per_unit:.4g}"
            raise argparse.ArgumentTypeError(
                f"must be at least 1 hour ({minimum} {unit}), got {text!r}: a certificate "
                "valid for less has expired by the time it is used")
        return value

    return parse


def _default_dir() -> str:
    return env_value(CERT_DIR) or "certs"


def _directory(text: str) -> str:
    """An argparse ``type`` for ``--dir``: ``text`` unless empty or blank.

    Raises:
        argparse.ArgumentTypeError: ``""`` (``--dir "$CERT_DIR"`` with the variable unset:
            ``Path("")`` is the working directory, where the CA's key would be written or
            looked for) or only blanks (argparse prints it, quoted, and exits 2).
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a directory path, got {text!r} (leave "
                                         f"--dir out for ${CERT_DIR}, else ./certs)")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshkit certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # metavar: a missing subcommand is "required: {init,issue,inspect}", not "cmd"
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{init,issue,inspect}")
    init = sub.add_parser("init", help="create the mesh CA (ca.pem, ca.key)")
    init.add_argument("--dir", default=_default_dir(), type=_directory,
                      help=f"where ca.pem and ca.key are written (default ${CERT_DIR}, "
                           "else ./certs)")
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                      help="the SPIFFE trust domain: workloads are "
                           f"spiffe://<td>/svc/<service> (default {DEFAULT_TRUST_DOMAIN})")
    init.add_argument("--ttl-days", type=_validity("days", 24.0), default=365.0,
                      help="validity of the CA, days (default 365; at least 1 hour)")
    init.add_argument("--permit-dns", action="append", default=None,
                      help="DNS subtree the CA may certify besides svc.<td> "
                           "(repeatable; default localhost)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    issue = sub.add_parser("issue", help="issue <service>.pem / <service>.key")
    issue.add_argument("service", help="the workload's service name (its SPIFFE ID's last "
                                       "part)")
    issue.add_argument("--dir", default=_default_dir(), type=_directory,
                       help="the CA's directory, where <service>.pem and <service>.key are "
                            f"written (default ${CERT_DIR}, else ./certs)")
    issue.add_argument("--ttl-h", type=_validity("hours", 1.0), default=24.0,
                       help="validity of the certificate, hours (default 24; at least 1)")
    issue.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable)")
    issue.add_argument("--force", action="store_true", help="replace (renew) existing files")
    insp = sub.add_parser("inspect", help="print a PEM certificate file's identity and validity")
    insp.add_argument("file", help="a PEM file of one or more certificates; - reads stdin "
                                   "(./- names a file called -)")
    return p


def _refuse_device(path: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``path`` when it is a character or block device or a
    socket: ``inspect`` reads the whole file, and ``/dev/zero`` or a disk never end (a
    ``MemoryError`` traceback, or the machine's memory first). A pipe (``/dev/stdin``
    fed by ``|``) and a regular file pass; a path that cannot be read is left to the
    reader, whose message says why."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    for is_kind, kind in ((stat.S_ISCHR, "a character device"),
                          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if is_kind(mode):
            raise error(f"cannot read certificates from {path}: not a certificate file "
                        f"({kind})")


def _stdin_path(error: type[Exception]) -> str:
    """The path ``inspect -`` reads stdin by (``/dev/stdin``: a pipe or a redirected
    file; devices are refused by :func:`_refuse_device` as for any path).

    Raises:
        error: stdin is a terminal (the command would look hung, waiting for a PEM
            typed in: one line saying how to feed it), or closed.
    """
    try:
        terminal = os.isatty(0)
    except OSError:
        terminal = False
    if terminal:
        raise error("cannot read certificates from stdin: it is a terminal (pipe or "
                    "redirect a PEM file into it: meshkit certs inspect - < cert.pem)")
    try:
        os.fstat(0)
    except OSError:
        raise error("cannot read certificates from stdin: it is closed") from None
    return "/dev/stdin" if os.path.exists("/dev/stdin") else "/dev/fd/0"


def main(argv: list[str]) -> int:
    """Run ``meshkit certs ...`` with ``argv`` (a leading ``"certs"`` is accepted and
    skipped); returns the exit code: 0 done, 1 refused/failed, 2 usage error.

    Errors (:class:`~meshkit.errors.ConfigError`, :class:`KeyExistsError`, unreadable
    files, a closed stdout) are printed to stderr as one line, never with key material.

    Raises:
        BrokenPipeError: stdout's reader went away (``meshkit.cli.main`` ends with 141).
    """
    args = list(argv)
    if args and args[0] == "certs":
        args = args[1:]
    try:
        ns = _parser().parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    from meshkit._cli._common import StdoutWriteError, printable, quiet_grpc_core

    quiet_grpc_core()  # before grpc loads (meshkit._config, meshkit.errors)
    from meshkit.auth._certs import (
        describe_certificate,
        init_ca_dir,
        issue_into_dir,
        load_certificates,
    )
    from meshkit.auth._errors import AuthError, CertificateError
    from meshkit.errors import ConfigError

    try:
        if ns.cmd == "init":
            files = init_ca_dir(ns.dir, trust_domain=ns.trust_domain, ttl_days=ns.ttl_days,
                                permitted_dns=tuple(ns.permit_dns or ("localhost",)),
                                overwrite=ns.force)
            # paths escaped (printable): a name that is not UTF-8 (\udcff) cannot be
            # encoded for a UTF-8 stdout, and would end the command after its work
            print(printable(f"CA for trust domain {ns.trust_domain}: {files.ca_file} "
                            f"(key {files.key_file}, mode 0600)"))
            return 0
        if ns.cmd == "issue":
            key_existed = any(os.path.exists(os.path.join(ns.dir, f"{ns.service}.{ext}"))
                              for ext in ("key", "pem"))
            files = issue_into_dir(ns.dir, ns.service, ttl_h=ns.ttl_h, dns=tuple(ns.dns),
                                   ips=tuple(ns.ip), overwrite=ns.force)
            info = describe_certificate(load_certificates(files.cert_file)[0])
            verb = "renewed (replaced)" if key_existed else "issued"
            print(printable(f"{verb} {info.spiffe_id}: {files.cert_file} (key "
                            f"{files.key_file}, mode 0600), valid until "
                            f"{info.not_after.isoformat()}"))
            return 0
        path = _stdin_path(CertificateError) if ns.file == "-" else ns.file
        _refuse_device(path, CertificateError)
        certs = load_certificates(path)
        for i, cert in enumerate(certs):
            try:
                lines = describe_certificate(cert).lines()
            except CertificateError as exc:  # the ones before it are printed
                raise CertificateError(f"{ns.file}: certificate {i + 1} of {len(certs)}: "
                                       f"{exc}") from None
            if i:
                print()
            # a certificate's names are anyone's text (a peer's, a downloaded bundle's):
            # their control characters escaped, never acting on the terminal
            print("\n".join(printable(line) for line in lines))
        return 0
    except BrokenPipeError:  # stdout's reader went away: meshkit.cli ends quietly (141)
        raise
    except StdoutWriteError:  # stdout cannot be written (a full disk): meshkit.cli says so
        raise
    except (AuthError, ConfigError, OSError) as exc:
        print(f"meshkit certs {ns.cmd}: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
