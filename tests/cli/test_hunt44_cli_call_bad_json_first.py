"""``meshkit call`` refuses a request that is not JSON before it reaches for the service.

The request's JSON was read only once reflection had given its type, so a syntax error
(``{bad``, a key given twice) went unsaid while the service was down or missing: the
command answered ``UNAVAILABLE`` (exit 78) after the registry read, or after up to
``--timeout-s``, for what is a usage error (exit 2 when the service is up). The text is
now parsed first; the check against the type still comes with reflection.
"""

from __future__ import annotations

import pytest

from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import meshkit_cli, uri

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(("request_text", "said"), [
    ("{bad", "request is not valid JSON"),
    ('{"a": 1, "a": 2}', "'a'"),
], ids=["syntax", "key-twice"])
async def test_bad_json_is_a_usage_error_with_no_service(
        registry: LocalRegistry, request_text: str, said: str) -> None:
    """No instance of 'nosuch' is registered: still exit 2 naming the JSON fault."""
    code, out, err = await meshkit_cli("call", "nosuch/M", request_text, "--registry",
                                       uri(registry), "--insecure", "--timeout-s", "5")
    assert code == 2, err
    assert said in err and "Traceback" not in err, err
    assert out == "", err


async def test_bad_json_on_stdin_is_a_usage_error_too(registry: LocalRegistry) -> None:
    """The same for '-' (stdin)."""
    code, _, err = await meshkit_cli("call", "nosuch/M", "-", "--registry", uri(registry),
                                     "--insecure", stdin=b"[1,")
    assert code == 2 and "request is not valid JSON" in err, err
