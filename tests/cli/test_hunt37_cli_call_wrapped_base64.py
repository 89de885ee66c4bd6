"""``meshkit call -H "x-bin: $(base64 < file)"``: GNU ``base64`` (and ``openssl base64``)
wrap their output every 76 (64) characters, so a value of more than 57 bytes arrives with
line breaks inside. meshkit refused it as "not base64", where grpcurl, whose conventions
``-H`` follows, decodes it (Go's decoder skips ``\\r`` and ``\\n``). Line breaks inside a
``-bin`` value are now skipped likewise; any other character outside the alphabets is
still refused, the value never printed."""

from __future__ import annotations

import base64
import textwrap

import pytest

from meshkit._cli.call import CallError, _metadata

_DATA = bytes(range(256)) * 2


@pytest.mark.parametrize("width", [76, 64], ids=["gnu-base64", "openssl"])
@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_a_wrapped_base64_value_is_decoded(width: int, eol: str) -> None:
    """The wrapped text of 512 bytes is sent as those bytes."""
    wrapped = eol.join(textwrap.wrap(base64.b64encode(_DATA).decode(), width)) + eol
    assert _metadata([f"trace-bin: {wrapped}"]) == (("trace-bin", _DATA),)


def test_a_wrapped_url_safe_unpadded_value_is_decoded() -> None:
    """URL-safe, unpadded and wrapped: decoded too."""
    text = base64.urlsafe_b64encode(_DATA[:100]).decode().rstrip("=")
    assert _metadata(["x-bin: " + "\n".join(textwrap.wrap(text, 76))]) == (
        ("x-bin", _DATA[:100]),)


@pytest.mark.parametrize("value", ["AA EC", "AA\tEC", "AAEC!", "AA\x0bEC"],
                         ids=["space", "tab", "bang", "vt"])
def test_other_characters_are_still_refused(value: str) -> None:
    """A blank, a tab or another stray character inside is no base64: a usage error
    that never quotes the value."""
    with pytest.raises(CallError, match="must be base64") as err:
        _metadata([f"x-bin: {value}"])
    assert "AA" not in str(err.value)
