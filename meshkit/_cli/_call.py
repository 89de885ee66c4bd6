"""The machinery of ``meshkit call`` (:mod:`meshkit._cli.call`): server reflection,
the request's proto3 JSON parsed into its message type, the unary call through the mesh,
the response printed as JSON. Imported by :func:`meshkit._cli.call.main` once the
arguments parsed, so ``meshkit call --help`` and a usage error load neither grpc nor
protobuf.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import (
    any_pb2,
    api_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    source_context_pb2,
    struct_pb2,
    text_format,
    timestamp_pb2,
    type_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_reflection.v1alpha import reflection_pb2

import meshkit
from meshkit._cli._common import (
    REGISTRY_READS_AT_ONCE,
    SERVICE_NAME,
    discover,
    read_services,
    service_names,
)
from meshkit._cli.call import CallError, Target
from meshkit.discovery import Registry
from meshkit.errors import MeshError, MeshRpcError

__all__ = ["Reflection"]


_REFLECTION = ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
               "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
_INFRA_PREFIXES = ("grpc.health.", "grpc.reflection.")
# protobuf's well-known types, each after the files it imports
_WELL_KNOWN = (any_pb2, duration_pb2, empty_pb2, field_mask_pb2, source_context_pb2,
               struct_pb2, timestamp_pb2, wrappers_pb2, type_pb2, api_pb2)
# the well-known types whose proto3 JSON form is not (or not only) a JSON object
_JSON_NOT_OBJECT = frozenset(
    {"google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.FieldMask",
     "google.protobuf.Value", "google.protobuf.ListValue"}
    | {f"google.protobuf.{name}" for name in (
        "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value",
        "UInt32Value", "BoolValue", "StringValue", "BytesValue")})
#: Message types looked up through reflection (one ``file_containing_symbol`` request each)
#: for the ``Any`` values of a request, and as many for those of a response: a response
#: of many ``Any`` types the server does not describe costs at most that many round trips.
_MAX_TYPE_LOOKUPS = 16
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


_SEND_ATTEMPTS = 3
PROBE_SETTLE_S = 6.0
"""How long a call that failed ``UNAVAILABLE`` on an mTLS channel waits for the TLS
probes of its endpoints under way (each bounded to 5 s) before it reports, seconds."""


def _send_refused(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a reflection call failed on grpc.aio's own INTERNAL "Internal error from
    Core": the server ended the call (e.g. UNAUTHENTICATED, UNIMPLEMENTED) as the request
    was being sent, and grpc.aio's failed send replaced the server's status. The request,
    a read, is sent again to learn that status (up to ``_SEND_ATTEMPTS`` times)."""
    return exc.code() is grpc.StatusCode.INTERNAL and exc.details() == "Internal error from Core"


# services without reflection named in the error of a /pkg.Svc/Method target
_MUTE_NAMED = 5


class _Deadline:
    """When the latest request of a ``meshkit call`` (a reflection request, the call)
    reaches its deadline, as ``time.monotonic()`` (the event loop's clock): what is left
    of it bounds the hint a failed call is given (:func:`_note_tls_endpoints`)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = time.monotonic()

    def start(self, timeout_s: float) -> None:
        """A request with a deadline of ``timeout_s`` seconds starts now."""
        self.at = time.monotonic() + timeout_s

    def left_s(self) -> float:
        """Seconds left until the deadline, 0 once it passed."""
        return max(0.0, self.at - time.monotonic())


class _NoReflection(CallError):
    """The server serves no gRPC reflection (neither ``v1alpha`` nor ``v1``)."""


class Reflection:
    """A server-reflection client over a mesh channel: lists gRPC services and loads
    their descriptors (with dependencies) into a private descriptor pool. Each request
    carries ``metadata`` (the ``-H`` headers, as grpcurl sends them on reflection too: a
    server may want the bearer token on every method)."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float,
                 metadata: tuple[tuple[str, str | bytes], ...] = (),
                 deadline: _Deadline | None = None) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self.metadata = metadata or None
        #: when the latest request's deadline ends (set as each request starts)
        self.deadline = deadline if deadline is not None else _Deadline()
        self.pool = descriptor_pool.DescriptorPool()
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._added: set[str] = set()
        self._path = _REFLECTION[0]

    async def _ask(self, request: reflection_pb2.ServerReflectionRequest,
                   ) -> reflection_pb2.ServerReflectionResponse:
        for path in dict.fromkeys((self._path, *_REFLECTION)):
            rpc = self.channel.stream_stream(
                path, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            for attempt in range(1, _SEND_ATTEMPTS + 1):
                self.deadline.start(self.timeout_s)
                try:
                    async for response in rpc(iter([request]), timeout=self.timeout_s,
                                              metadata=self.metadata):
                        self._path = path
                        if response.HasField("error_response"):
                            raise CallError(
                                f"reflection: {response.error_response.error_message}")
                        return response
                    break
                except grpc.aio.AioRpcError as exc:
                    if _send_refused(exc) and attempt < _SEND_ATTEMPTS:
                        continue
                    if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    break
        raise _NoReflection("the server does not serve gRPC reflection")

    async def services(self) -> list[str]:
        """The gRPC services the server lists (health and reflection included)."""
        resp = await self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return [s.name for s in resp.list_services_response.service]

    async def _fetch(self, request: reflection_pb2.ServerReflectionRequest,
                     ) -> list[descriptor_pb2.FileDescriptorProto]:
        resp = await self._ask(request)
        try:
            out = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                   for raw in resp.file_descriptor_response.file_descriptor_proto]
        except DecodeError:  # the server's bytes: no traceback for them
            raise CallError("reflection: the server sent a file descriptor that cannot be "
                            "decoded") from None
        for fd in out:
            self._files.setdefault(fd.name, fd)
        return out

    async def _add(self, name: str, importers: tuple[str, ...] = ()) -> None:
        """Add the file ``name`` to the pool, its imports first (``importers``: the files
        importing it, being added).

        Raises:
            CallError: reflection does not return it, its imports form a cycle (protoc
                forbids one; a server's reflection may send anything), or protobuf
                cannot build it (a type no file defines...): named, on one line.
        """
        if name in self._added:
            return
        if name in importers:
            cycle = " -> ".join(repr(n) for n in (*importers[importers.index(name):], name))
            raise CallError(f"reflection: the server's files import each other in a "
                            f"cycle ({cycle})")
        with contextlib.suppress(KeyError):  # there already (a well-known type's, added here)
            self.pool.FindFileByName(name)
            self._added.add(name)
            return
        if name not in self._files:
            await self._fetch(reflection_pb2.ServerReflectionRequest(file_by_filename=name))
            if name not in self._files:
                raise CallError(f"reflection did not return {name!r}")
        fd = self._files[name]
        for dep in fd.dependency:
            await self._add(dep, (*importers, name))
        try:
            self.pool.Add(fd)
        except (TypeError, ValueError) as exc:  # "Couldn't build proto file into ..."
            raise CallError(f"reflection: the server's file {name!r} cannot be loaded: "
                            f"{_one_line(exc)}") from None
        self._added.add(name)

    async def methods(self, grpc_service: str) -> list[MethodDescriptor]:
        """The methods of ``grpc_service`` (a full name the server lists)."""
        await self._fetch(reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=grpc_service))
        owner = next((f.name for f in self._files.values()
                      if any(f"{f.package}.{s.name}".lstrip(".") == grpc_service
                             for s in f.service)), None)
        if owner is None:
            raise CallError(f"reflection does not describe {grpc_service!r}")
        await self._add(owner)
        return list(self.pool.FindServiceByName(grpc_service).methods)

    async def add_type(self, name: str) -> bool:
        """Load the message type ``name`` (a full name) into the pool, with its file's
        imports, asking reflection (``file_containing_symbol``) when the pool lacks it.

        Returns:
            Whether the pool has it now: False when the server does not describe it, its
            descriptor bytes cannot be decoded, or its file cannot join the pool (it
            differs from a file of that name there).

        Raises:
            grpc.aio.AioRpcError: the reflection request failed.
        """
        if _known(self.pool, name):
            return True
        try:
            files = await self._fetch(reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=name))
            owner = next((f.name for f in files if _defines(f, name)), None)
            if owner is None:
                return False
            await self._add(owner)
        except (CallError, DecodeError, TypeError, ValueError, KeyError):
            # not found; bytes that are no FileDescriptorProto; a clashing file
            return False
        return _known(self.pool, name)


def _known(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    """Whether ``pool`` has the message type ``name``."""
    try:
        pool.FindMessageTypeByName(name)
    except KeyError:
        return False
    return True


def _defines(fd: descriptor_pb2.FileDescriptorProto, name: str) -> bool:
    """Whether the file ``fd`` defines the message type ``name`` (nested ones included)."""
    prefix = f"{fd.package}." if fd.package else ""
    stack = [(prefix + m.name, m) for m in fd.message_type]
    while stack:
        full, message = stack.pop()
        if full == name:
            return True
        stack += [(f"{full}.{m.name}", m) for m in message.nested_type]
    return False


async def _add_types(refl: Reflection, missing: Callable[[], list[str]]) -> bool:
    """Load through ``refl`` the message types ``missing()`` names (the ``Any`` types the
    pool lacks; asked again after each round, as a type loaded may hold ``Any`` values of
    more), at most ``_MAX_TYPE_LOOKUPS`` of them; whether any was loaded.

    Raises:
        grpc.aio.AioRpcError: a reflection request failed.
    """
    tried: set[str] = set()
    added = False
    while len(tried) < _MAX_TYPE_LOOKUPS:
        names = [n for n in missing() if n not in tried][:_MAX_TYPE_LOOKUPS - len(tried)]
        if not names:
            break
        for name in names:
            tried.add(name)
            added = await refl.add_type(name) or added
    return added


def _type_name(url: str) -> str:
    """The message type an ``Any``'s type URL names (json_format's reading: what follows
    the last ``/``); empty when that is no protobuf full name."""
    name = url.rsplit("/", 1)[-1]
    return name if _TYPE_NAME.fullmatch(name) else ""


def _json_types(value: Any, pool: descriptor_pool.DescriptorPool) -> list[str]:
    """The types the ``"@type"`` values in the JSON ``value`` (at any depth) name that
    ``pool`` lacks."""
    names: dict[str, None] = {}
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            url = item.get("@type")
            if isinstance(url, str) and (name := _type_name(url)):
                names[name] = None
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return [n for n in names if not _known(pool, n)]


def _any_types(message: Any, pool: descriptor_pool.DescriptorPool) -> list[str]:
    """The types the ``Any`` values in ``message`` (at any depth, inside the ``Any``
    values of types ``pool`` has too) name that ``pool`` lacks."""
    names: dict[str, None] = {}
    stack = [message]
    while stack:
        item = stack.pop()
        if item.DESCRIPTOR.full_name == _ANY:
            name = _type_name(item.type_url)
            if not name:
                continue
            try:
                stack.append(_message_class(pool.FindMessageTypeByName(name))
                             .FromString(item.value))
            except KeyError:
                names[name] = None
            except DecodeError:  # bytes that are not that type: printed as they are
                pass
            continue
        stack += _sub_messages(item)
    return list(names)


def _sub_messages(message: Any) -> list[Any]:
    """The messages held in ``message``'s fields (singular, repeated and map values)."""
    out: list[Any] = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            out += [v for v in value.values() if isinstance(v, Message)]
        elif isinstance(value, Message):
            out.append(value)
        else:  # a repeated message field's container
            out += value
    return out


def _matches(full_name: str, wanted: str | None) -> bool:
    """Whether the gRPC service ``full_name`` is the one ``wanted`` (a full or short name,
    None: any); health and reflection only when named in full."""
    if full_name == wanted:
        return True
    if full_name.startswith(_INFRA_PREFIXES):
        return False
    return wanted is None or full_name.rsplit(".", 1)[-1] == wanted


async def _resolve(refl: Reflection, target: Target) -> MethodDescriptor | None:
    """The one method ``target`` names on the server ``refl`` asks; None when the server
    does not serve it.

    Raises:
        CallError: the name is ambiguous.
    """
    found: list[MethodDescriptor] = []
    for svc in await refl.services():
        if _matches(svc, target.grpc_service):
            try:
                methods = await refl.methods(svc)
            except CallError:
                if target.grpc_service is not None:  # the service named: its error
                    raise
                continue  # one reflection cannot describe (a generic handler's): not it
            found += [m for m in methods if m.name == target.method]
    if len(found) > 1:
        names = ", ".join(f"/{m.containing_service.full_name}/{m.name}" for m in found)
        raise CallError(f"{target.method!r} is ambiguous ({names}): "
                        "name the gRPC service, e.g. SERVICE/pkg.Svc/Method")
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class _Args:
    target: Target
    request_json: str
    registry: Registry
    options: meshkit.DialOptions
    metadata: tuple[tuple[str, str | bytes], ...]
    timeout_s: float


async def _find_service(args: _Args) -> str:
    """The mesh service serving ``/pkg.Svc/...``: the first listed (sorted) whose
    reflection says so. The listed services are asked together, at most
    :data:`~meshkit._cli._common.REGISTRY_READS_AT_ONCE` at once, so services that do not
    answer (a stale entry of a host gone silent) cost one ``--timeout-s`` together, not
    one each. A listed name no mesh client can dial
    (:data:`~meshkit._cli._common.SERVICE_NAME`) is passed over: a Consul catalog holds
    other tools' services too, ``"web cache"``, and ``dial()`` would refuse the name,
    ending the command.

    Raises:
        CallError: no listed service serves it (each answered, or serves no reflection:
            the message names those, at most 5, and how to serve it).
        grpc.aio.AioRpcError: none was found serving it and asking one failed with a gRPC
            status (the first such, e.g. ``UNAUTHENTICATED``; its details name the
            service): which one serves it is unknown, so the exit status is that call
            failure's, as for a ``SERVICE/...`` target.
        MeshRpcError: ``UNAVAILABLE``, the registry cannot be read (as a dial through it
            fails), so the exit status is 64 + 14 for either target form.
    """
    try:
        names = await service_names(args.registry, args.timeout_s)
    except MeshError as exc:
        raise MeshRpcError(grpc.StatusCode.UNAVAILABLE,
                           f"the service registry cannot be read: {exc}") from None
    wanted = args.target.grpc_service
    # a name no meshkit service can have serves nothing (dial() would refuse it)
    asked = [n for n in names if SERVICE_NAME.fullmatch(n) is not None]
    at_once = asyncio.Semaphore(REGISTRY_READS_AT_ONCE)
    tasks = [asyncio.create_task(_serves(args, name, wanted, at_once)) for name in asked]
    failed: grpc.aio.AioRpcError | None = None
    mute: list[str] = []  # services that serve no reflection: they may serve it
    try:
        for name, task in zip(asked, tasks, strict=True):  # the first listed that serves it
            answer = await task
            if answer is True:
                return name
            if answer is None:
                mute.append(name)
            elif isinstance(answer, grpc.aio.AioRpcError) and failed is None:
                failed = answer
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failed is not None:
        raise failed
    if mute:
        shown = ", ".join(repr(n) for n in mute[:_MUTE_NAMED])
        more = f" and {len(mute) - _MUTE_NAMED} more" if len(mute) > _MUTE_NAMED else ""
        raise CallError(
            f"no service in the registry that serves gRPC server reflection serves "
            f"{wanted!r}; {shown}{more} serve{'s' if len(mute) == 1 else ''} no reflection, "
            "so whether they serve it is unknown: name the service with --service, and "
            "serve reflection there (serve() serves it unless told not to: "
            "ServeOptions(reflection=True), the default)")
    raise CallError(f"no service in the registry serves {wanted!r}; name it with --service")


async def _serves(args: _Args, name: str, wanted: str | None, at_once: asyncio.Semaphore
                  ) -> bool | grpc.aio.AioRpcError | None:
    """Whether the mesh service ``name`` serves the gRPC service ``wanted``, as its
    reflection says (each request bounded by ``--timeout-s``): True or False (False too
    for a reflection error response), None when it serves no reflection, or the gRPC
    failure of asking it (its details naming ``name``). At most ``at_once`` are asked
    together.

    The ``-H`` metadata (often a bearer token) goes only to a service whose reflection
    refuses the request without it ``UNAUTHENTICATED`` (meshkit's JWT auth covers
    reflection unless it is made public): the user named none of the listed services,
    and the others must not see it."""
    async with at_once, meshkit.dial(name, registry=args.registry,
                                     options=args.options) as ch:
        try:
            try:
                return wanted in await Reflection(ch, args.timeout_s).services()
            except grpc.aio.AioRpcError as exc:
                if not args.metadata or exc.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    raise
            return wanted in await Reflection(ch, args.timeout_s, args.metadata).services()
        except _NoReflection:
            return None
        except CallError:  # a reflection error response
            return False
        except grpc.aio.AioRpcError as exc:
            return grpc.aio.AioRpcError(
                exc.code(), grpc.aio.Metadata(), grpc.aio.Metadata(),
                details=f"reflection on {name!r} (finding the service of "
                        f"{wanted!r}): {exc.details()}")


async def _check_discovery(args: _Args, service: str) -> None:
    """Read ``service``'s instances once, bounded by ``--timeout-s``, before it is dialled:
    a registry that never answers would otherwise have the first reflection request wait
    on discovery until its deadline (``DEADLINE_EXCEEDED``). The read is the registry's
    ``snapshot()`` where it has one (as ``meshkit services`` reads a service), which
    raises the registry's error at once; a watch, the fallback, retries a failing read,
    so a registry that cannot be opened (a bad ``local:`` path) would only time out,
    its cause unsaid.

    Raises:
        MeshRpcError: ``UNAVAILABLE``, the registry cannot be read (as for a
            ``/pkg.Svc/Method`` target's listing), its error in the details.
    """
    try:
        if getattr(args.registry, "snapshot", None) is not None:
            found, _ = await read_services(args.registry, [service], args.timeout_s)
        else:
            found = await discover(args.registry, [service], args.timeout_s)
    except MeshError as exc:
        raise MeshRpcError(grpc.StatusCode.UNAVAILABLE,
                           f"the service registry cannot be read: {exc}") from None
    if found[service] is None:
        raise MeshRpcError(grpc.StatusCode.UNAVAILABLE,
                           f"the service registry cannot be read: no answer for {service!r} "
                           f"within {args.timeout_s} s")


async def _call(args: _Args) -> tuple[str, str | None]:
    """Resolve and make the call; the response's text and a warning or None (as
    :func:`_to_json` gives them)."""
    if args.target.service is None:
        service = await _find_service(args)
    else:
        service = args.target.service
        await _check_discovery(args, service)
    deadline = _Deadline()
    async with meshkit.dial(service, registry=args.registry, options=args.options) as ch:
        try:
            return await _call_on(ch, service, args, deadline)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                await _note_connect_errors(ch, exc)
                if getattr(args.options, "insecure", False):
                    # within the failed request's deadline: an endpoint that never
                    # answers the handshake must not hold the command past it
                    await _note_tls_endpoints(ch, exc, deadline.left_s())
            raise


TLS_SNIFF_S = 3.0
"""Bound on the TLS handshakes :func:`_note_tls_endpoints` tries, together, seconds
(lowered to what is left of the failed request's deadline)."""


async def _speaks_tls(address: str, within_s: float = TLS_SNIFF_S) -> bool:
    """Whether the server at ``address`` (``host:port``, ``[v6]:port``) answers a TLS
    handshake (certificates not checked): it completes, or the server ends it with a TLS
    alert (a client certificate it requires). A plaintext server (``WRONG_VERSION_NUMBER``,
    a reset), a refused or unreachable one, or no answer within ``within_s`` seconds
    (the handshake and the close together): ``False``."""
    import ssl

    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    until = asyncio.get_running_loop().time() + within_s
    try:
        async with asyncio.timeout_at(until):
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=ctx)
    except ssl.SSLError as exc:
        return "ALERT" in (exc.reason or "")
    except (OSError, ValueError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout_at(until):
            await writer.wait_closed()
    return True


async def _note_tls_endpoints(ch: meshkit.MeshChannel, exc: grpc.aio.AioRpcError,
                              within_s: float = TLS_SNIFF_S) -> None:
    """Add to ``exc`` (a call on a plaintext channel, ``--insecure``, failed
    ``UNAVAILABLE``) a note per endpoint that answers a TLS handshake: a plaintext
    channel has no TLS probe to say why it cannot connect, and the status read only
    "all N endpoints are failing or ejected". Bounded by :data:`TLS_SNIFF_S` and by
    ``within_s`` (seconds, what is left of the failed request's deadline: the hint stays
    within ``--timeout-s``); none left, no handshake is tried."""
    within_s = min(TLS_SNIFF_S, within_s)
    if within_s <= 0:
        return
    endpoints = [ep for ep in ch.stats().endpoints if ep.present]
    found = await asyncio.gather(*(_speaks_tls(ep.address, within_s) for ep in endpoints))
    for ep, tls in zip(endpoints, found, strict=True):
        if tls:
            exc.add_note(f"endpoint {ep.instance_id} at {ep.address} speaks TLS: the "
                         "server may require TLS (mTLS); give --cert-dir (and --workload) "
                         "instead of --insecure")


async def _note_connect_errors(ch: meshkit.MeshChannel, exc: grpc.aio.AioRpcError) -> None:
    """Add to ``exc`` (a call failed ``UNAVAILABLE``) a note per endpoint of an mTLS
    channel that cannot be connected, with its TLS probe's reason
    (``EndpointStats.connect_error``), once the probes under way have answered (at most
    :data:`PROBE_SETTLE_S`): the call fails as soon as every endpoint is failing, before
    a probe a few round trips long has answered, and ``meshkit call`` quiets the log
    that would say it. A reason the status message quotes already is not repeated."""
    diagnosis = ch._pool.diagnosis
    if diagnosis is None:  # plaintext, or other credentials: no probe
        return
    await diagnosis.settle(PROBE_SETTLE_S)
    details = exc.details() or ""
    for ep in ch.stats().endpoints:
        if ep.present and ep.connect_error is not None and (
                f"{ep.instance_id} at {ep.address}: {ep.connect_error}" not in details):
            exc.add_note(f"endpoint {ep.instance_id} at {ep.address} cannot be connected: "
                         f"{ep.connect_error}")


async def _call_on(ch: meshkit.MeshChannel, service: str, args: _Args,
                   deadline: _Deadline | None = None) -> tuple[str, str | None]:
    """:func:`_call` on the channel ``ch`` to ``service``; ``deadline`` is set as each
    request (reflection's, the call) starts."""
    deadline = deadline if deadline is not None else _Deadline()
    refl = Reflection(ch, args.timeout_s, args.metadata, deadline)
    try:
        method = await _resolve(refl, args.target)
    except _NoReflection:
        raise CallError(
            f"{service!r} does not serve gRPC server reflection, which meshkit call "
            "reads the method's request and response types from: serve() serves it "
            "unless told not to (ServeOptions(reflection=True), the default)") from None
    if method is None:
        raise CallError(f"{service!r} serves no method {args.target.method!r}"
                        + (f" in {args.target.grpc_service!r}"
                           if args.target.grpc_service else ""))
    kind = descriptor_pb2.MethodDescriptorProto()
    method.CopyToProto(kind)  # MethodDescriptor.*_streaming needs protobuf >= 5
    if kind.client_streaming or kind.server_streaming:
        raise CallError(f"/{method.containing_service.full_name}/{method.name} is a "
                        "streaming method: meshkit call makes unary calls only")
    request_cls = _message_class(method.input_type)
    response_cls = _message_class(method.output_type)
    pool = refl.pool  # where an Any's type is found
    _add_well_known_types(pool)
    request = request_cls()
    if args.request_json:
        value = _load_json(args.request_json, request_cls.DESCRIPTOR)
        try:
            _parse_request(value, request, pool)
        except CallError:  # an Any of a type the method's files do not bring?
            if not await _add_types(refl, lambda: _json_types(value, pool)):
                raise
            request = _parse_request(value, request_cls(), pool)
    rpc = ch.unary_unary(f"/{method.containing_service.full_name}/{method.name}",
                         request_serializer=request_cls.SerializeToString,
                         response_deserializer=response_cls.FromString)
    deadline.start(args.timeout_s)
    response = await rpc(request, timeout=args.timeout_s, metadata=args.metadata or None)
    # the call ran: from here on no error loses its answer (see _to_json)
    try:
        return _json_text(response, pool), None
    except Exception:  # an Any of a type the method's files do not bring? too deep?
        pass
    with contextlib.suppress(Exception):  # a reflection request failed: opaque Anys
        await _add_types(refl, lambda: _any_types(response, pool))
    return _to_json(response, pool)


def _add_well_known_types(pool: descriptor_pool.DescriptorPool) -> None:
    """Add protobuf's well-known types (part of every protobuf runtime) to reflection's
    ``pool`` where the server's files did not bring them, so an ``Any`` holding one
    (a ``Duration``, a ``Struct``...) is parsed and printed like any other."""
    for module in _WELL_KNOWN:
        file = module.DESCRIPTOR
        try:
            pool.FindFileByName(file.name)
            continue
        except KeyError:
            pass
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        with contextlib.suppress(TypeError, ValueError):  # the server's own, different file
            pool.Add(proto)


def _parse_json(text: str) -> Any:
    """The JSON ``text`` loaded (a leading byte order mark passed over), whatever type
    it is to have: :func:`meshkit._cli.call.main` checks a request with it before it
    reads the registry, so a request that is not JSON is a usage error (exit 2) even
    when the service is down or missing, not ``UNAVAILABLE`` after the wait.

    Raises:
        CallError: not JSON (or nested deeper than the parser goes), or a key given
            twice in an object (at any depth).
    """
    try:
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_object)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, not UTF-8, too deep
        raise CallError(f"request is not valid JSON: {_one_line(exc)}") from None


def _load_json(text: str, descriptor: Any) -> Any:
    """The JSON ``text`` of a request of the message type ``descriptor``, loaded; a
    leading byte order mark (what Windows editors and PowerShell 5's redirection write)
    is passed over, as RFC 8259 8.1 lets a parser do.

    Raises:
        CallError: not JSON (or nested deeper than the parser goes), a key given twice in
            an object (at any depth: RFC 8259 4 leaves which one counts unpredictable),
            or not a JSON object when the type's proto3 JSON form is one (all but some
            well-known types, ``_JSON_NOT_OBJECT``).
    """
    value = _parse_json(text)
    if not isinstance(value, dict) and descriptor.full_name not in _JSON_NOT_OBJECT:
        raise CallError(f"request must be a JSON object (message {descriptor.full_name}), "
                        f"got {type(value).__name__}")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of ``pairs``, with no key twice (``json.loads``' object hook).

    Raises:
        CallError: a key given twice (named).
    """
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise CallError(f"request has a duplicate key {key!r}: give each key once")
            seen.add(key)
    return out


def _parse_request(value: Any, request: Any, pool: descriptor_pool.DescriptorPool) -> Any:
    """``request`` filled from the JSON ``value`` (see :func:`_load_json`), per the proto3
    JSON mapping.

    Raises:
        CallError: not a valid message of its type (what ``json_format.Parse`` refuses,
            the errors ``ParseDict`` lets out, e.g. ``OverflowError``, included).
    """
    try:
        return json_format.ParseDict(value, request, descriptor_pool=pool)
    except json_format.ParseError as exc:
        raise CallError(f"request is not a valid {request.DESCRIPTOR.full_name}: "
                        f"{_one_line(exc)}") from None
    except (ValueError, TypeError, OverflowError, AttributeError, KeyError, IndexError,
            RecursionError) as exc:  # json_format.Parse makes them a ParseError too
        raise CallError(f"request is not a valid {request.DESCRIPTOR.full_name}: "
                        f"{type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a value it quotes may hold line breaks)."""
    return str(exc).replace("\r", "\\r").replace("\n", "\\n")


def _json_text(response: Any, pool: descriptor_pool.DescriptorPool) -> str:
    """``response`` as indented JSON (proto field names).

    Raises:
        TypeError, DecodeError: an ``Any`` of a type ``pool`` lacks, or whose bytes are not
            of its type.
        json_format.SerializeToJsonError, ValueError: a value with no proto3 JSON form.
    """
    text: str = json_format.MessageToJson(response, preserving_proto_field_name=True,
                                          indent=2, descriptor_pool=pool)
    return text


def _to_json(response: Any, pool: descriptor_pool.DescriptorPool) -> tuple[str, str | None]:
    """``response`` as indented JSON (proto field names), and None; the answer of a call
    that ran is never lost: an ``Any`` of a type neither the server's reflection nor the
    well-known types describe (or with bytes and no type URL) is printed as ``{"@type":
    URL, "@value": "<base64 of its bytes>"}`` (grpcurl's fallback), and a response with no
    proto3 JSON form (a ``Struct`` holding NaN or infinity, a ``Timestamp`` or
    ``Duration`` out of its JSON range...) or that cannot be printed as JSON (``Any``
    values nested deeper than Python's recursion limit: each level is decoded afresh, so
    protobuf's decode depth limit never applies) in protobuf's text format, which keeps
    every value (each ``Any`` as its bytes when expanding them fails; non-ASCII written
    as octal escapes of its UTF-8 bytes, never raw: no control character reaches the
    terminal), with a warning
    (one line, saying why) in place of None; should that fail too, as ``{"@type": the
    response's type, "@value": "<base64 of its serialized bytes>"}``."""
    try:
        try:
            return _json_text(response, pool), None
        except (TypeError, DecodeError):  # "Can not find message descriptor by type_url"
            pass
        opaque: dict[str, tuple[str, bytes]] = {}
        marked = _mark_unknown_anys(response, pool, opaque)
        tree = json_format.MessageToDict(marked, preserving_proto_field_name=True,
                                         descriptor_pool=pool)
        # ensure_ascii as MessageToJson's: a server's C1 control (U+009B CSI), DEL or
        # bidi override is written \uXXXX, never raw to the terminal
        return json.dumps(_unmark(tree, opaque), indent=2), None
    except (json_format.SerializeToJsonError, ValueError, TypeError) as exc:
        why = f"the response has no proto3 JSON form ({_one_line(exc)})"
    except Exception as exc:  # RecursionError: Anys nested too deep
        why = (f"the response cannot be printed as JSON ({type(exc).__name__}: "
               f"{_one_line(exc)})")
    # an Any's bytes not of its type, or Anys nested too deep: each Any as its bytes.
    # as_utf8=False (protobuf 7 made True the default, which writes non-ASCII raw and
    # escapes C0 only): every byte >= 0x80 as an octal escape, so a server's C1 control
    # (U+009B CSI), bidi override or NEL never reaches the terminal raw, as on the JSON paths
    for printer_pool in (pool, descriptor_pool.DescriptorPool()):
        try:
            text: str = text_format.MessageToString(response, descriptor_pool=printer_pool,
                                                    as_utf8=False)
        except Exception:  # the next printer expands no Any
            continue
        return text, f"{why}: printed in protobuf text format"
    raw = base64.b64encode(response.SerializePartialToString()).decode("ascii")
    return (json.dumps({"@type": response.DESCRIPTOR.full_name, "@value": raw}, indent=2),
            f"{why}: printed as its serialized bytes in base64")


_ANY = "google.protobuf.Any"
_MARK = "type.googleapis.com/google.protobuf.StringValue"


def _mark_unknown_anys(message: Any, pool: descriptor_pool.DescriptorPool,
                       opaque: dict[str, tuple[str, bytes]]) -> Any:
    """A copy of ``message`` where each ``Any`` (at any depth, inside known ``Any``s too)
    whose type ``pool`` does not know holds a ``StringValue`` token instead, the token
    mapped to the original type URL and bytes in ``opaque``."""
    out = type(message)()
    out.CopyFrom(message)
    _mark_in_place(out, pool, opaque)
    return out


def _mark_in_place(message: Any, pool: descriptor_pool.DescriptorPool,
                   opaque: dict[str, tuple[str, bytes]]) -> None:
    if message.DESCRIPTOR.full_name == _ANY:
        if not message.type_url and not message.value:  # the empty Any: {}
            return
        try:
            inner_desc = pool.FindMessageTypeByName(message.type_url.rsplit("/", 1)[-1])
        except KeyError:
            inner_desc = None
        try:
            inner = (None if inner_desc is None
                     else _message_class(inner_desc).FromString(message.value))
        except DecodeError:  # bytes that are not that type: print them as they are
            inner = None
        if inner is None:
            token = f"meshkit-opaque-any-{len(opaque)}"
            opaque[token] = (message.type_url, message.value)
            message.Pack(wrappers_pb2.StringValue(value=token))
            return
        _mark_in_place(inner, pool, opaque)
        message.value = inner.SerializeToString()
        return
    for item in _sub_messages(message):
        _mark_in_place(item, pool, opaque)


def _unmark(tree: Any, opaque: dict[str, tuple[str, bytes]]) -> Any:
    """``tree`` (MessageToDict's output) with each token ``Any`` put back as
    ``{"@type": URL, "@value": base64}``."""
    if isinstance(tree, dict):
        if tree.get("@type") == _MARK and tree.get("value") in opaque and len(tree) == 2:
            url, raw = opaque[tree["value"]]
            return {"@type": url, "@value": base64.b64encode(raw).decode("ascii")}
        return {k: _unmark(v, opaque) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unmark(v, opaque) for v in tree]
    return tree


def _message_class(descriptor: Any) -> Any:
    """The message class of ``descriptor`` (``GetMessageClass`` from protobuf 4.22 on)."""
    get = getattr(message_factory, "GetMessageClass", None)
    if get is not None:
        return get(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)


async def _run(args: _Args) -> tuple[str, str | None]:
    try:
        return await _call(args)
    finally:
        await args.registry.close()
