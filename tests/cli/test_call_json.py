"""``meshkit call``'s JSON <-> protobuf conversion (meshkit/_cli/call.py) against the proto3
JSON mapping and protobuf's reference implementation (``json_format.Parse`` /
``MessageToJson``), as a user runs it: the CLI in a subprocess against an in-process
``serve()`` server.

The server's types come from proto files written here: ``rich.proto`` (the called
service), and ``events.proto`` and ``envelope.proto``, which ``rich.proto`` does not import
(types packed into an ``Any``, as events and error details usually are); ``events.proto``
has a service of the same server, ``envelope.proto`` only a message the server's
reflection describes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, wrappers_pb2
from grpc_reflection.v1alpha import reflection_pb2

import meshkit
from meshkit._cli.call import Reflection
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import at_once, meshkit_cli, uri

pytestmark = pytest.mark.timeout(60)

_PROTO_DIR = Path(tempfile.mkdtemp(prefix="meshkit-test-call-json-"))
(_PROTO_DIR / "meshkit_call_json").mkdir()
(_PROTO_DIR / "meshkit_call_json" / "rich.proto").write_text("""
syntax = "proto3";
package meshkit.calljson;
import "google/protobuf/any.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
enum Color { COLOR_UNSPECIFIED = 0; RED = 1; }
message Rich {
  Color color = 1;
  string a = 2;
  google.protobuf.Struct st = 3;
  google.protobuf.Timestamp ts = 4;
  google.protobuf.Any any = 5;
  int64 amount_cents = 6;
  map<string, google.protobuf.Any> extras = 7;
}
service RichService {
  rpc Echo (Rich) returns (Rich);
  rpc Make (Rich) returns (Rich);
  rpc Lookup (google.protobuf.StringValue) returns (Rich);
  rpc At (google.protobuf.Timestamp) returns (Rich);
}
""")
(_PROTO_DIR / "meshkit_call_json" / "events.proto").write_text("""
syntax = "proto3";
package meshkit.calljson.events;
message OrderPlaced { string order_id = 1; int64 cents = 2; }
service Audit { rpc Last (OrderPlaced) returns (OrderPlaced); }
""")
(_PROTO_DIR / "meshkit_call_json" / "envelope.proto").write_text("""
syntax = "proto3";
package meshkit.calljson.envelope;
import "google/protobuf/any.proto";
message Envelope { repeated google.protobuf.Any items = 1; }
""")
sys.path.insert(0, str(_PROTO_DIR))
rich_pb, rich_grpc = grpc.protos_and_services("meshkit_call_json/rich.proto")
events_pb, events_grpc = grpc.protos_and_services("meshkit_call_json/events.proto")
envelope_pb = grpc.protos("meshkit_call_json/envelope.proto")
sys.path.remove(str(_PROTO_DIR))

RICH = "meshkit.calljson.RichService"
EVENT_URL = "type.googleapis.com/meshkit.calljson.events.OrderPlaced"
ENVELOPE_URL = "type.googleapis.com/meshkit.calljson.envelope.Envelope"
UNDESCRIBED_URL = "type.googleapis.com/meshkit.calljson.Undescribed"
_DEEP_ANY_LEVELS = 2000  # an Any holding an Any ... (~100 KB), beyond Python's recursion limit


def _deep_any() -> Any:
    """An ``Any`` holding an ``Any`` ... ``_DEEP_ANY_LEVELS`` deep, a ``StringValue`` at
    the bottom."""
    inner = any_pb2.Any()
    inner.Pack(wrappers_pb2.StringValue(value="bottom"))
    for _ in range(_DEEP_ANY_LEVELS):
        outer = any_pb2.Any()
        outer.Pack(inner)
        inner = outer
    return inner


class Rich(rich_grpc.RichServiceServicer):  # type: ignore[misc,name-defined]
    """``Echo`` answers the request; ``Make`` answers what its ``a`` names; ``Lookup`` and
    ``At`` answer their well-known request type in ``a`` and ``ts``."""

    async def Echo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return request

    async def Make(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        out = rich_pb.Rich(a="the call ran")
        if request.a == "event":
            out.any.Pack(events_pb.OrderPlaced(order_id="o-1", cents=5))
        elif request.a == "nested-event":
            inner = envelope_pb.Envelope()
            inner.items.add().Pack(events_pb.OrderPlaced(order_id="o-3", cents=9))
            out.extras["e"].Pack(inner)
        elif request.a == "nan-in-struct":
            out.st["ratio"] = float("nan")
        elif request.a == "bad-timestamp":
            out.ts.seconds = 253402300800  # 10000-01-01: beyond RFC 3339
        elif request.a == "any-without-type-url":
            out.any.value = b"\x08\x01"
        elif request.a == "undescribed":
            out.any.type_url = UNDESCRIBED_URL
            out.any.value = b"\x08\x01"
        elif request.a == "deep-any":
            out.any.CopyFrom(_deep_any())
        return out

    async def Lookup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return rich_pb.Rich(a=request.value)

    async def At(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return rich_pb.Rich(ts=request)


class Audit(events_grpc.AuditServicer):  # type: ignore[misc,name-defined]
    async def Last(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return request


async def _cli(registry: LocalRegistry, *args: str) -> tuple[int, str, str]:
    """``meshkit call ARGS --registry ... --insecure --timeout-s 5``; (status, out, err)."""
    return await meshkit_cli("call", *args, "--registry", uri(registry), "--insecure",
                             "--timeout-s", "5")


@pytest.fixture
async def rich(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    """A plaintext ``rich`` instance serving RichService and Audit (reflection on)."""
    server = meshkit.MeshServer(
        "rich", [(rich_grpc.add_RichServiceServicer_to_server, Rich()),
                 (events_grpc.add_AuditServicer_to_server, Audit())],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="rich-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


async def test_request_any_of_a_type_the_server_describes_in_another_file_is_parsed(
        rich: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """A request ``Any`` holding ``OrderPlaced`` -- a type the server's reflection
    describes (``file_containing_symbol`` answers it) in a file the called method's file
    does not import -- was refused as a usage error (exit 2, "Can not find message
    descriptor by type_url") when the target named the gRPC service
    (``rich/pkg.RichService/Echo``), while ``rich/Echo`` worked (that form happened to
    load every listed service's file). The request's ``@type`` names are now looked up
    through reflection first, as grpcurl does: both forms work."""
    body = json.dumps({"any": {"@type": EVENT_URL, "orderId": "o-2", "cents": "7"}})
    code, out, err = await _cli(registry, f"rich/{RICH}/Echo", body)
    assert code == 0, (code, err)
    assert json.loads(out) == {"any": {"@type": EVENT_URL, "order_id": "o-2", "cents": "7"}}


@pytest.mark.parametrize(("what", "answer"), [
    ("event", {"any": {"@type": EVENT_URL, "order_id": "o-1", "cents": "5"}}),
    ("nested-event", {"extras": {"e": {"@type": ENVELOPE_URL, "items": [
        {"@type": EVENT_URL, "order_id": "o-3", "cents": "9"}]}}})])
async def test_response_any_of_a_type_the_server_describes_in_another_file_is_printed(
        rich: meshkit.MeshServer, registry: LocalRegistry, what: str,
        answer: dict[str, Any]) -> None:
    """A response ``Any`` holding a type the server's reflection describes in a file the
    method's file does not import (in a map value, and inside another such ``Any``'s
    repeated field too) printed as the opaque ``{"@type": URL, "@value": "<base64>"}``
    with a ``SERVICE/pkg.Svc/Method`` target; README keeps that form for the types the
    server does not describe. Each such type is now looked up through reflection and
    printed with its fields."""
    code, out, err = await _cli(registry, f"rich/{RICH}/Make", json.dumps({"a": what}))
    assert code == 0, (code, err)
    assert json.loads(out) == {"a": "the call ran", **answer}


async def test_request_with_a_duplicate_json_key_is_refused_not_last_value_wins(
        rich: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """``{"amount_cents": 100, "amount_cents": 100000}`` was sent with 100000 (the last
    value silently won, exit 0). protobuf's ``json_format.Parse`` and Go's protojson
    (grpcurl) refuse duplicate names: a request whose meaning depends on which one a
    parser keeps is now a usage error (exit 2, one line naming the key), nothing sent, at
    any depth."""
    bodies = ('{"amount_cents": 100, "amount_cents": 100000}', '{"st": {"limit": 1, "limit": 2}}')
    results = await at_once(*(_cli(registry, f"rich/{RICH}/Echo", body) for body in bodies))
    for body, (code, out, err) in zip(bodies, results, strict=True):
        assert (code, out) == (2, ""), (body, code, out, err)
        assert len(err.splitlines()) == 1 and "duplicate" in err, (body, err)
        assert ("amount_cents" if "amount" in body else "limit") in err, (body, err)


@pytest.mark.parametrize(("method", "body"), [("Echo", '{"color": 1e400}'),
                                              ("Lookup", '{"value": "abc"}')])
async def test_request_json_protobuf_rejects_without_a_parse_error_is_a_usage_error(
        rich: meshkit.MeshServer, registry: LocalRegistry, method: str, body: str) -> None:
    """``{"color": 1e400}`` (an enum given a number that overflows) ended in an
    ``OverflowError`` traceback and exit 1, and ``{"value": "abc"}`` for a
    ``google.protobuf.StringValue`` request (whose JSON form is a bare string) in a
    ``TypeError`` one: only ``json_format.ParseError`` was caught, and ``ParseDict`` lets
    others out. Either is now a usage error: exit 2, one line."""
    code, out, err = await _cli(registry, f"rich/{RICH}/{method}", body)
    assert (code, out) == (2, ""), (code, err[-400:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-400:]
    assert "request is not a valid" in err, err


@pytest.mark.parametrize(("method", "body", "answer"), [
    ("Lookup", '"abc"', {"a": "abc"}),
    ("At", '"2024-05-01T12:00:00Z"', {"ts": "2024-05-01T12:00:00Z"})])
async def test_a_request_type_whose_json_form_is_not_an_object_can_be_called(
        rich: meshkit.MeshServer, registry: LocalRegistry, method: str, body: str,
        answer: dict[str, Any]) -> None:
    """A method whose request type is a well-known type with a non-object JSON form
    (``rpc Lookup(google.protobuf.StringValue)``, ``rpc At(google.protobuf.Timestamp)``)
    could not be called at all: its proto3 JSON form (``"abc"``, an RFC 3339 string) was
    refused as "request must be a JSON object" (exit 2). Such a request is now parsed as
    the proto3 JSON mapping says (as ``json_format.Parse`` and grpcurl do)."""
    code, out, err = await _cli(registry, f"rich/{RICH}/{method}", body)
    assert code == 0, (code, err[-400:])
    assert json.loads(out) == answer, out


@pytest.mark.parametrize(("what", "kept"), [("nan-in-struct", "nan"),
                                            ("bad-timestamp", "253402300800")])
async def test_a_response_with_no_proto3_json_form_is_printed_with_a_warning(
        rich: meshkit.MeshServer, registry: LocalRegistry, what: str, kept: str) -> None:
    """A call that ran and answered a ``Struct`` holding NaN (a 0/0 ratio) or a
    ``Timestamp`` beyond year 9999 (neither has a proto3 JSON form) ended in a
    ``SerializeToJsonError``/``ValueError`` traceback and exit 1: the answer was lost. It
    is now printed in protobuf's text format (which keeps every value), with one warning
    line on stderr saying why, and exit 0 (the call succeeded)."""
    code, out, err = await _cli(registry, f"rich/{RICH}/Make", json.dumps({"a": what}))
    assert code == 0, (code, err[-600:])
    assert len(err.splitlines()) == 1 and "no proto3 JSON form" in err, err
    assert 'a: "the call ran"' in out and kept in out, out


@pytest.mark.parametrize(("what", "url"), [("any-without-type-url", ""),
                                         ("undescribed", UNDESCRIBED_URL)])
async def test_a_response_any_of_no_type_the_server_describes_is_printed_opaque(
        rich: meshkit.MeshServer, registry: LocalRegistry, what: str, url: str) -> None:
    """A response ``Any`` with bytes but an empty ``type_url`` (a server that set
    ``value`` without packing) ended in ``TypeError: Can not find message descriptor by
    type_url:`` and a traceback (exit 1): the opaque fallback skipped an ``Any`` with no
    type URL. It now prints as ``{"@type": "", "@value": "<base64>"}``, exit 0, as an
    ``Any`` of a type the server's reflection does not describe does (with its URL)."""
    code, out, err = await _cli(registry, f"rich/{RICH}/Make", json.dumps({"a": what}))
    assert (code, err) == (0, ""), (code, err[-600:])
    assert json.loads(out) == {"a": "the call ran", "any": {"@type": url, "@value": "CAE="}}


async def test_a_deeply_nested_any_response_is_still_printed(
        rich: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """A call that ran and answered an ``Any`` holding an ``Any`` ... 2000 deep (~100 KB;
    protobuf's decode depth limit never applies, each level's bytes are decoded afresh)
    ended in a ``RecursionError`` traceback and exit 1, nothing printed: json_format, the
    opaque-``Any`` fallback and the text-format printer all recurse per level, and only
    four other error types were caught. The answer is now printed (protobuf's text
    format, each ``Any`` as its bytes), with one warning line on stderr, exit 0."""
    code, out, err = await _cli(registry, f"rich/{RICH}/Make", '{"a": "deep-any"}')
    assert "Traceback" not in err, err[-800:]
    assert code == 0, (code, err[-800:])
    assert len(err.splitlines()) == 1 and "warning" in err, err[-800:]
    assert "the call ran" in out


class _GarbledReflection:
    """A channel whose reflection answers every request with descriptor bytes that are
    not a ``FileDescriptorProto``."""

    def stream_stream(self, path: str, **kwargs: Any) -> Any:
        async def rpc(requests: Any, **kwargs: Any) -> AsyncIterator[Any]:
            yield reflection_pb2.ServerReflectionResponse(
                file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                    file_descriptor_proto=[b"\xff"]))
        return rpc


async def test_a_reflection_answer_that_cannot_be_decoded_does_not_lose_the_answer() -> None:
    """After a call that ran, looking up a response ``Any``'s type through reflection let
    a ``DecodeError`` out when the server's descriptor bytes could not be decoded (only
    the errors of a type not found or a clashing file were caught): a traceback, exit 1,
    the answer lost. Such a type now counts as one the server does not describe (its
    ``Any`` is printed opaque)."""
    refl = Reflection(_GarbledReflection(), 5.0)  # type: ignore[arg-type]
    assert await refl.add_type("meshkit.calljson.Undescribed") is False
