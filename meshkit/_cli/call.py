"""``meshkit call``: one unary call with a JSON request, through the mesh.

The target is ``SERVICE/Method`` (a mesh service as registered and a method of the gRPC
service it serves, e.g. ``userd/CreateUser``), ``SERVICE/pkg.Svc/Method`` when it serves
two methods of that name, or a full gRPC name ``/pkg.Svc/Method`` (the mesh service that
serves it is found in the registry, or named with ``--service``). gRPC's health and
reflection services match only when named in full (``SERVICE/grpc.health.v1.Health/Check``).
The request and response types come from the server's reflection service (``serve()``
turns it on), so no generated code is needed: the request, in the proto3 JSON form of its
type (protobuf.dev/programming-guides/json: a JSON object for most messages, a string for
a ``Timestamp`` or a ``StringValue``...; none: the empty message, as ``{}``; empty or
blank text, an argument or stdin, is refused: an unset variable or a failed producer in a
pipe would otherwise send the empty message in its place), is parsed
with protobuf's ``json_format`` and the response printed as JSON (proto field names). A key
given twice in a JSON object (at any depth) is refused, as ``json_format.Parse`` and
grpcurl refuse it. An ``Any`` may hold a type the server describes (one the method's files
do not bring is looked up through reflection's ``file_containing_symbol``, as grpcurl
does: at most 16 types for the request, as many for the response) or one of protobuf's
well-known types (``Duration``, ``Struct``...); a response's ``Any`` of any other type
(or with bytes and no type URL) is printed as ``{"@type": URL, "@value": "<base64>"}``.
A response with no proto3 JSON form (a ``Struct`` holding NaN, a ``Timestamp`` after year
9999) is printed in protobuf's text format instead, which keeps every value, after one
warning line on stderr saying why: the call succeeded (exit 0).

The call is dialled with :func:`meshkit.dial` through the registry, so it is balanced,
retried and secured like any client: mTLS with the workload certificate from
``--cert-dir``/``--workload`` (default ``$MESHKIT_CERT_DIR``/``$MESHKIT_WORKLOAD``), or
plaintext with ``--insecure``.

Request metadata comes from ``-H 'KEY: VALUE'`` and goes on the reflection requests too
(for a ``/pkg.Svc/Method`` target, the probes that find its service go without it, and
with it only to a service whose reflection refuses them ``UNAUTHENTICATED``);
a ``KEY`` ending in ``-bin`` (gRPC's binary metadata) takes its value base64-encoded,
standard or URL-safe alphabet, padding optional, line breaks inside skipped (the
wrapped output of ``base64``), and sends the decoded bytes (grpcurl's
conventions). An error never prints a header's value (it is often a bearer token).

Exit status: 0 on success; 2 for a usage error (bad target, JSON that is not a valid
request of its type (a key given twice included), a request on stdin (``-``) that is not
UTF-8, an empty or blank request, registry URI, ``--timeout-s``, header (a reserved
``grpc-`` key included, and a header HTTP/2 or gRPC leaves to the transport: a
pseudo-header, ``connection`` and the other connection-specific ones RFC 9113 8.2.2
forbids, ``host``, ``te``, ``content-type``, ``content-length``, ``user-agent``), no
transport security; a call meshkit refuses to send, e.g. a header gRPC cannot carry);
64 + the gRPC status code number when the call fails (as grpcurl does), with the status
and its message on stderr (on one line, its control characters escaped as ``repr`` writes
them: a server's message never acts on the terminal): a registry that cannot be read
within ``--timeout-s`` is ``UNAVAILABLE`` (78) for every target form. A call over mTLS
that fails ``UNAVAILABLE`` says why endpoints cannot be connected: in its status message
(``... are failing or ejected (w1 at HOST:PORT: certificate verify failed: ...)``) or,
for a reason the message does not give, on a line each (``meshkit call: endpoint w1 at
HOST:PORT cannot be connected: certificate verify failed: ...``), once the TLS probes of
them under way have answered (up to 6 s more; :mod:`meshkit.auth._probe`).
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshkit._cli._common import (
    add_registry_argument,
    missing_local_registry,
    open_registry,
    positive_seconds,
    printable,
    quiet_grpc_core,
    quiet_logging,
    service_name,
)
from meshkit._env import CERT_DIR, WORKLOAD, env_value

if TYPE_CHECKING:  # grpc, protobuf and the mesh client load once the arguments parsed
    import meshkit
    from meshkit._cli._call import Reflection as Reflection

__all__ = ["CallError", "Target", "build_parser", "main", "parse_target"]

# the parser's description: the docstring's first paragraph; none under python -OO
# (PYTHONOPTIMIZE=2), which strips docstrings
_DESCRIPTION = (__doc__ or "").split("\n\n")[0] or None

class CallError(Exception):
    """A usage problem found while resolving the call (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed call target: mesh ``service`` (None: find it), gRPC service (full or
    short name, None: any) and method name."""

    service: str | None
    grpc_service: str | None
    method: str


def parse_target(text: str, service: str | None = None) -> Target:
    """Parse ``SERVICE/Method``, ``SERVICE/Svc/Method`` or ``/pkg.Svc/Method``.

    Args:
        text: the target as typed.
        service: the ``--service`` option (the mesh service for a ``/pkg.Svc/Method``).

    Raises:
        CallError: any other shape (quoted), a ``SERVICE`` (or ``service``) that is no
            mesh service name (:func:`~meshkit._cli._common.service_name`: quoted), or
            a ``service`` beside a ``SERVICE/...`` target naming another service.
    """
    parts = text.split("/")
    found: Target | None = None
    if text.startswith("/") and len(parts) == 3 and all(parts[1:]):
        found = Target(service, parts[1], parts[2])
    elif not text.startswith("/") and len(parts) in (2, 3) and all(parts):
        if service is not None and service != parts[0]:  # which one? never a guess
            raise CallError(f"target {text!r} names the service {parts[0]!r} and --service "
                            f"{service!r} another: --service is for a /pkg.Svc/Method "
                            "target; give one")
        found = Target(parts[0], parts[1] if len(parts) == 3 else None, parts[-1])
    if found is not None:
        if found.service is not None:
            try:
                service_name(found.service)
            except argparse.ArgumentTypeError as exc:
                raise CallError(f"target {text!r}: {exc}") from None
        return found
    raise CallError(f"target must be SERVICE/Method, SERVICE/pkg.Svc/Method or "
                    f"/pkg.Svc/Method, got {text!r}")


_KEYLIKE = re.compile(r"[0-9A-Za-z_.\-]+")
# headers -H cannot set, and why: connection-specific ones (RFC 9113 8.2.2: an endpoint
# MUST NOT generate them, a peer MUST treat the message as malformed: Envoy, nginx and Go's
# server reset the stream), host beside gRPC's :authority (RFC 9113 8.3.1), and those
# gRPC over HTTP/2 sets itself (PROTOCOL-HTTP2.md), which grpc core drops unsent
_CONNECTION_SPECIFIC = "a connection-specific header, which HTTP/2 forbids (RFC 9113 8.2.2)"
_SET_BY_GRPC = "gRPC sets it itself (grpc core would drop it unsent)"
_PROTOCOL_HEADERS = {
    **dict.fromkeys(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                     "upgrade"), _CONNECTION_SPECIFIC),
    "host": "HTTP/2 carries the authority in ':authority', which gRPC sets (RFC 9113 8.3.1)",
    **dict.fromkeys(("te", "content-type", "user-agent"), _SET_BY_GRPC),
    # HTTP/2 frames the body; a length other than the DATA frames' makes the request
    # malformed (RFC 9113 8.1.1), and grpc core drops it unsent
    "content-length": "HTTP/2 frames the message itself (RFC 9113 8.1.1; grpc core "
                      "would drop it unsent)",
}
_PSEUDO = re.compile(r"\s*:[0-9A-Za-z_.\-]+\s*:")
_URLSAFE = str.maketrans("-_", "+/")
_LINE_BREAKS = str.maketrans("", "", "\r\n")


def _metadata(pairs: list[str]) -> tuple[tuple[str, str | bytes], ...]:
    """The ``-H 'KEY: VALUE'`` pairs as call metadata: keys lower-cased, a ``-bin`` key's
    value base64-decoded, all checked against gRPC's rules.

    Raises:
        CallError: a pair without ``:``, an empty or invalid key, a key gRPC reserves
            (``grpc-...``: gRPC's own headers, e.g. ``grpc-status``), a pseudo-header
            (``:authority``), a header HTTP/2 or gRPC leaves to the transport
            (``connection`` and the other connection-specific ones, RFC 9113 8.2.2;
            ``host``; ``te``, ``content-type``, ``content-length``, ``user-agent``), a
            ``-bin`` value that is not base64, a text value gRPC cannot send. The message
            may quote a key of a key's shape, never a value, nor a "key" of another shape
            (``-H "authorization=Bearer id:secret"`` is a common slip: its "key" holds part
            of the token); see :func:`meshkit.errors.describe_metadata_key`.
    """
    from meshkit._metadata import check_metadata
    from meshkit.errors import InvalidCallError, describe_metadata_key

    out: list[tuple[str, str | bytes]] = []
    for pair in pairs:
        key, sep, value = pair.partition(":")
        key = key.strip().lower()
        if not sep:
            guess = pair.partition("=")[0].strip()
            named = f" (for {guess!r}?)" if "=" in pair and _KEYLIKE.fullmatch(guess) else ""
            raise CallError(f"-H takes 'KEY: VALUE', got a header with no ':'{named}")
        if not key:
            if _PSEUDO.match(pair):  # ':authority: x'
                raise CallError("-H cannot set an HTTP/2 pseudo-header (':name'): gRPC "
                                "sets them itself")
            raise CallError("-H takes 'KEY: VALUE', got an empty key")
        if key.startswith("grpc-"):
            raise CallError(f"-H {describe_metadata_key(key)}: keys starting with 'grpc-' "
                            "are reserved for gRPC itself")
        if key in _PROTOCOL_HEADERS:
            raise CallError(f"-H {describe_metadata_key(key)}: {_PROTOCOL_HEADERS[key]}")
        out.append((key, _binary(key, value.strip()) if key.endswith("-bin")
                    else value.strip()))
    try:
        check_metadata(out)
    except InvalidCallError as exc:
        raise CallError(f"-H {exc.details()}") from None
    return tuple(out)


def _binary(key: str, value: str) -> bytes:
    """A ``-bin`` header's base64 ``value`` decoded: standard or URL-safe alphabet,
    padding optional, line breaks inside skipped (``$(base64 < file)`` wraps every 76
    characters), as grpcurl accepts (Go's decoder skips ``\r`` and ``\n``)."""
    text = value.translate(_LINE_BREAKS).rstrip("=").translate(_URLSAFE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error, or not ASCII
        pass
    from meshkit.errors import describe_metadata_key

    raise CallError(f"-H {describe_metadata_key(key)}: a '-bin' key's value must be base64 "
                    "(standard or URL-safe), this one is not")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``meshkit call``."""
    p = argparse.ArgumentParser(prog="meshkit call", description=_DESCRIPTION,
                                epilog="Exit status: 0 ok, 2 usage error (including a call "
                                       "meshkit refuses to send), 64 + gRPC code when the "
                                       "call fails.")
    p.add_argument("target", help="SERVICE/Method, SERVICE/pkg.Svc/Method or /pkg.Svc/Method")
    p.add_argument("request", nargs="?", default=None,
                   help="the request in its type's proto3 JSON form, e.g. a JSON object "
                        "(default: the empty message; - reads it from stdin; an empty "
                        "one is refused: {} is the empty message)")
    add_registry_argument(p)
    p.add_argument("--service", default=None, type=service_name,
                   help="mesh service to dial for a /pkg.Svc/Method target (with a "
                        "SERVICE/... target, it must be that SERVICE)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'KEY: VALUE'",
                   help="request metadata, e.g. -H 'authorization: Bearer ...' (repeatable); "
                        "a KEY ending in -bin takes a base64 VALUE and sends the decoded "
                        "bytes (e.g. -H 'trace-bin: AAEC')")
    p.add_argument("--timeout-s", type=positive_seconds, default=10.0,
                   help="deadline of the call (and of each registry read and reflection "
                        "request), positive seconds (default 10)")
    p.add_argument("--cert-dir", default=env_value(CERT_DIR),
                   help="meshkit certs directory (default $MESHKIT_CERT_DIR)")
    p.add_argument("--workload", default=env_value(WORKLOAD),
                   help="this client's workload name in --cert-dir (default $MESHKIT_WORKLOAD)")
    p.add_argument("--insecure", action="store_true", help="plaintext, no mTLS")
    return p


def _dial_options(args: argparse.Namespace) -> meshkit.DialOptions:
    import meshkit
    from meshkit.auth import tls_from_dir

    if args.insecure:
        return meshkit.DialOptions(insecure=True, telemetry=None)
    if not (args.cert_dir and args.workload):
        raise CallError("no transport security: set MESHKIT_CERT_DIR and MESHKIT_WORKLOAD "
                        "(or --cert-dir and --workload), or pass --insecure")
    # a missing file's error names a workload `meshkit certs issue` refuses (tls_from_dir)
    return meshkit.DialOptions(tls=tls_from_dir(args.cert_dir, args.workload), telemetry=None)


def _read_stdin() -> str:
    """The request given on stdin (``-``): all its bytes, decoded as UTF-8 (JSON text is
    UTF-8, RFC 8259 8.1), whatever the locale's encoding.

    Raises:
        CallError: stdin is closed, cannot be read, or is not UTF-8.
    """
    if sys.stdin is None:  # the process started with file descriptor 0 closed
        raise CallError("the request is '-' but stdin is closed")
    buffer = getattr(sys.stdin, "buffer", None)  # None: a text stream with no bytes under it
    try:
        data: bytes | str = sys.stdin.read() if buffer is None else buffer.read()
    except OSError as exc:
        raise CallError(f"the request cannot be read from stdin: {exc}") from None
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CallError(f"the request on stdin is not UTF-8 (byte {exc.start}: "
                        f"{exc.reason})") from None


def _request_text(request: str | None) -> str:
    """The request's JSON text: ``""`` (the empty message) for no request argument, else
    the argument or, for ``-``, stdin (:func:`_read_stdin`).

    Raises:
        CallError: the argument or stdin holds no JSON at all (empty, blank: an unset
            variable, a producer in a pipe that failed), which would otherwise send the
            empty message in its place; ``{}`` is the empty message. An argument that
            is not UTF-8 (its byte named). Or stdin's errors.
    """
    if request is None:
        return ""
    body = _read_stdin() if request == "-" else request
    where = "on stdin" if request == "-" else "argument"
    try:  # an argument's bytes that are not UTF-8 come as surrogates (surrogateescape)
        body.encode("utf-8")
    except UnicodeEncodeError as exc:
        at = len(body[:exc.start].encode("utf-8", "surrogateescape"))
        raise CallError(f"the request {where} is not UTF-8 (byte {at})") from None
    if not body.removeprefix("\ufeff").strip():
        raise CallError(f"the request {where} is empty: give {{}} for the empty message "
                        "(or no request argument)")
    return body


def main(argv: list[str]) -> int:
    """Run ``meshkit call``; returns the exit status (see the module docstring)."""
    ns = build_parser().parse_args(argv)
    quiet_grpc_core()  # before grpc loads: C-core reads GRPC_VERBOSITY then
    import asyncio

    import grpc

    from meshkit._cli._call import _Args, _parse_json, _run
    from meshkit.errors import ConfigError, InvalidCallError

    quiet_logging()
    try:
        target, metadata = parse_target(ns.target, ns.service), _metadata(ns.header)
        options = _dial_options(ns)
        body = _request_text(ns.request)
        if body:  # not JSON: a usage error, before the registry (the type comes later)
            _parse_json(body)
        registry = open_registry(ns.registry)
        if (missing := missing_local_registry(registry)) is not None:  # dial() makes it
            print(f"ERROR: UNAVAILABLE: the service registry cannot be read: {missing}",
                  file=sys.stderr)
            return 64 + int(grpc.StatusCode.UNAVAILABLE.value[0])
        args = _Args(target, body, registry, options, metadata, ns.timeout_s)
        text, warning = asyncio.run(_run(args))
    # what is printed on stderr may quote a server (a status message, a reflection
    # error) or a registry: its control characters are escaped (printable())
    except (CallError, ConfigError) as exc:
        print(f"meshkit call: {printable(str(exc))}", file=sys.stderr)
        return 2
    except InvalidCallError as exc:  # refused before any attempt: nothing was sent
        print(f"meshkit call: {printable(exc.details() or '')}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        code: Any = exc.code()
        print(f"ERROR: {code.name}: {printable(exc.details() or '')}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):  # why an mTLS endpoint fails (_call)
            print(f"meshkit call: {printable(str(note))}", file=sys.stderr)
        return 64 + int(code.value[0])
    if warning is not None:
        print(f"meshkit call: warning: {printable(warning)}", file=sys.stderr)
    print(text)
    return 0


if not TYPE_CHECKING:
    # Hidden from type checkers (they see the import above). The reflection client
    # lives in meshkit._cli._call since ``meshkit call --help`` stopped importing grpc
    # and protobuf; still readable here as before.

    def __getattr__(name: str) -> Any:
        if name != "Reflection":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from meshkit._cli._call import Reflection

        return Reflection
