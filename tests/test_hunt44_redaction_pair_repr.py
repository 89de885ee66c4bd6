"""gRPC metadata written into text as the repr of its pairs kept every credential: an
f-string's ``f"md={md}"``, an exception whose message quotes a call's metadata, show
``[('authorization', 'Basic dXNlcjpwYXNz'), ('x-api-key', 'k-123')]`` or
``Metadata((('cookie', b'sid=abc'),))``. redact_secrets read such pairs as a field's
value, not inside a string.

Now in text a ``('key', value)`` pair (a tuple's repr: a quoted key, ``,``, a value)
whose key names a credential has its value ``[REDACTED]`` (quotes kept); other pairs,
and lists of names (``['password', 'user']``), as they are; linear in the length."""

from __future__ import annotations

import grpc.aio
import pytest

from meshkit.observability import redact_secrets
from tests.support.redaction import N, assert_linear, assert_redacted_in_fields

pytestmark = pytest.mark.timeout(60)

_MD = grpc.aio.Metadata(("authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", "k 123"),
                        ("x-req", "r1"))
_CASES = {
    "list-of-pairs": ("md=[('x-api-key', 'k-123'), ('password', 'pw w'), ('x-req', 'r1')]",
                      "md=[('x-api-key', '[REDACTED]'), ('password', '[REDACTED]'), "
                      "('x-req', 'r1')]"),
    "grpc-metadata": (repr(_MD),
                      "Metadata((('authorization', '[REDACTED]'), ('x-api-key', "
                      "'[REDACTED]'), ('x-req', 'r1')))"),
    "bytes-value": ("(('cookie', b'sid=abc'),)", "(('cookie', b'[REDACTED]'),)"),
    "double-quoted": ('("token", "a b")', '("token", "[REDACTED]")'),
    "no-blank": ("('token','abc')", "('token','[REDACTED]')"),
    # not credentials, or no pair: as they are
    "plain": ("[('x-req', 'r1'), ('user', 'u')]", "[('x-req', 'r1'), ('user', 'u')]"),
    "names": ("fields ['password', 'user'] required", "fields ['password', 'user'] required"),
    "call": ("check('password', 'user')", "check('password', 'user')"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_credential_pairs_in_a_repr_are_redacted(case: str) -> None:
    """A credential-named pair's value in a tuple's repr in text is redacted."""
    value, shown = _CASES[case]
    assert_redacted_in_fields(value, shown)


def test_an_exception_quoting_metadata_is_redacted() -> None:
    """An exception field whose message quotes metadata pairs is redacted."""
    err = RuntimeError(f"call failed with metadata {list(_MD)}")
    out = redact_secrets(None, "info", {"event": "e", "error": err})
    assert "dXNlcjpwYXNz" not in str(out["error"])
    assert "k 123" not in str(out["error"])


_SHAPES = {
    "open-pairs": "('token', '" * (N // 11),
    "many-pairs": "('token', 'a')" * (N // 14),
    "parens": "(" * N,
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """A 100 KB adversarial string is redacted well under a CPU
    second (process_time: a loaded box's waiting not counted)."""
    assert_linear(_SHAPES[shape], text=True)
