"""URIs as logs and error messages may quote them: user info (a password) masked.

A low-level module (standard library only), so any meshkit package may use it (the
registry URIs of :mod:`meshkit.discovery`, the storage URI of the rate limiter).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection

__all__ = ["hide_userinfo", "mask_query", "shown_value", "split_userinfo"]


def split_userinfo(uri: str) -> tuple[str, str, str]:
    """``uri`` as ``(scheme://, user info and its @, the rest)``:
    ``"redis://u:pw@h:6379/0"`` -> ``("redis://", "u:pw@", "h:6379/0")``; ``""`` for a
    part it has not. A URI without
    ``scheme://`` (or with ``://`` only in its query or fragment) is taken as
    ``[user[:password]@]host...``.

    User info is everything after ``scheme://`` up to the *last* ``@``, wherever that is:
    a password may hold an unencoded ``/``, ``?``, ``#`` or ``@`` (generated and base64
    passwords do), where a URI parser (``urllib.parse.urlsplit``) ends the host part at
    the first ``/``, ``?`` or ``#`` and so finds no password at all. An ``@`` in a query
    or fragment makes what comes before it user info too: more is masked, never less.
    """
    scheme, sep, after = uri.partition("://")
    if not sep or "?" in scheme or "#" in scheme:  # no "//" ("://" only in a query value)
        scheme, sep, after = "", "", uri
    userinfo, at, rest = after.rpartition("@")
    return f"{scheme}{sep}", f"{userinfo}{at}", rest


def hide_userinfo(uri: str) -> str:
    """``uri`` with its user info (see :func:`split_userinfo`) replaced by ``***``:
    ``"redis://u:pa/ss@h:6379/0"`` -> ``"redis://***@h:6379/0"``; a URI without ``@``
    comes back unchanged."""
    if "@" not in uri:
        return uri
    prefix, _, rest = split_userinfo(uri)
    return f"{prefix}***@{rest}"


def mask_query(rest: str, known: Collection[str] = ()) -> str:
    """``rest`` (what follows a URI's user info: ``host:port/path?query#fragment``) with
    the value of each query key not in ``known`` (option names whose values are no
    secret) and any fragment replaced by ``***``: ``"h:6379/0?db=1&password=pw"`` with
    ``known={"db"}`` -> ``"h:6379/0?db=1&password=***"``. A token or password passed
    under a query name a driver reads (or one it ignores) never reaches a log; keys and
    the rest are shown as written.

    Pieces are split at ``;`` as well as ``&`` (the W3C's and older parsers' second
    separator: ``?ttl_s=5;password=pw`` shows ``ttl_s=5;password=***``, though
    ``urllib.parse`` reads ``5;password=pw`` as ``ttl_s``'s value), and a known key's value
    that, decoded, holds ``&``, ``;``, ``=`` or ``?`` (never an option's value, but a
    second pair run into it: ``ttl_s=5%26password%3Dpw``, ``ttl_s=5?password=pw``) is
    masked too, and so is a whole piece whose key, decoded, holds one of those
    (``password%3Dpw``: a pair whose ``=`` was percent-encoded, also ``password%3Dpw==``
    with base64 padding after it). Decoding is repeated (``%253D``: encoded twice) up to
    4 times. More is masked, never less."""
    rest, hash_, _ = rest.partition("#")
    base, qmark, query = rest.partition("?")
    if query:
        pieces = []
        for piece in _SEPARATORS.split(query):  # the separators kept, at odd places
            key, eq, value = piece.partition("=")
            if key not in ("&", ";") and _run_in(key):
                # a key holding, decoded, a run-in pair: one whose '=' was percent-encoded
                # (``password%3Dpw``, also with a '=' of base64 padding after it,
                # ``password%3Dpw==``, or encoded twice, ``password%253Dpw``), its secret
                # in what a parser reads as a key: the whole piece masked
                pieces.append("***")
                continue
            masked = eq and (urllib.parse.unquote_plus(key) not in known or _run_in(value))
            pieces.append(f"{key}=***" if masked else piece)
        query = "".join(pieces)
    return f"{base}{qmark}{query}{hash_}{'***' if hash_ else ''}"


def shown_value(value: str) -> str:
    """An option value of a URI's query quoted for an error (``repr``), or ``'***'`` when
    it holds ``&``, ``;``, ``=`` or ``?``: never an option's value, but a second pair run
    into it (``?ttl_s=5;password=pw``, which ``urllib.parse`` reads as ``ttl_s``'s value
    ``5;password=pw``), also once decoded again (``5%3Bpassword%3Dpw``: encoded twice),
    whose secret must not reach a log, as :func:`mask_query` masks it in the URI shown
    beside it."""
    return "'***'" if _run_in(value) else repr(value)


def _run_in(text: str) -> bool:
    """Whether ``text`` holds ``&``, ``;``, ``=`` or ``?`` as written or once decoded,
    decoded again and again (``%253D`` is ``%3D`` encoded once more: a template that
    encoded an encoded value), up to :data:`_DECODE_ROUNDS` times."""
    for _ in range(_DECODE_ROUNDS):
        if _RUN_IN.search(text):
            return True
        decoded = urllib.parse.unquote_plus(text)
        if decoded == text:
            return False
        text = decoded
    return _RUN_IN.search(text) is not None


_SEPARATORS = re.compile(r"([&;])")
_RUN_IN = re.compile(r"[&;=?]")
#: how many times :func:`_run_in` decodes a text (each a '%25' layer: 3 are 4 decodes)
_DECODE_ROUNDS = 4
