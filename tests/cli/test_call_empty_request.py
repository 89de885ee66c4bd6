"""``meshkit call``: a request argument or stdin that holds no JSON at all (an empty
variable, a producer in a pipe that failed) is a usage error, not the empty message sent
for it; no argument still sends the empty message, ``{}`` too."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import greeter, meshkit_cli, uri

pytestmark = pytest.mark.timeout(60)

__all__ = ["greeter"]  # the fixture, imported to be used here


@pytest.mark.parametrize(("request_arg", "stdin"), [
    ("-", b""),          # `producer | meshkit call ... -` with a producer that failed
    ("-", b" \n\t\n"),   # 'Expecting value: line 3 column 1' before
    ("", None),          # meshkit call svc/Method "$REQUEST" with REQUEST unset
    (" ", None),
])
async def test_a_request_of_no_json_is_refused_not_sent_empty(
        greeter: meshkit.MeshServer, registry: LocalRegistry, request_arg: str,
        stdin: bytes | None) -> None:
    """Empty stdin and an empty argument sent the empty message (a Delete... of default
    fields, say): exit 0 and the server's answer."""
    code, out, err = await meshkit_cli(
        "call", "greeter/Greeter/SayHello", request_arg, "--registry", uri(registry),
        "--insecure", stdin=stdin)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("meshkit call: the request ") and "{}" in err, err


@pytest.mark.parametrize(("args", "stdin"), [((), None), (("{}",), None),
                                            (("-",), b"{}\n")])
async def test_no_request_argument_or_braces_send_the_empty_message(
        greeter: meshkit.MeshServer, registry: LocalRegistry, args: tuple[str, ...],
        stdin: bytes | None) -> None:
    code, out, err = await meshkit_cli(
        "call", "greeter/Greeter/SayHello", *args, "--registry", uri(registry),
        "--insecure", stdin=stdin)
    assert (code, err) == (0, ""), (args, code, err)
    assert '"message": "Hello, !"' in out, out
