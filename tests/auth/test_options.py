"""The auth options refuse a wrong type in any field at construction, with ``ConfigError``
naming the field and quoting the value (:mod:`meshkit._config`), and own the collections
they are given: a policy given as its rules mapping, a verifier given as its options,
``None`` for a list of methods or patterns, a non-string issuer, audience or ``typ``, and a
``method_scopes`` dict the caller changes afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, JWTAuthOptions, Rule, VerifierOptions
from meshkit.auth._jwt import TokenVerifier
from meshkit.errors import ConfigError

Build = Callable[[], object]


def _verifier_options(**kw: Any) -> VerifierOptions:
    return VerifierOptions(issuer="https://issuer", audience="orders", **kw)


def _refused(build: Build, field: str, value: object) -> str:
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert field in message, message
    assert repr(value) in message, message
    return message


_OBJECTS: dict[str, tuple[Build, object]] = {
    "policy": (lambda: AuthOptions(  # the rules mapping, without AuthzPolicy(rules=...)
        policy={"/meshkit.test.Echo/*": Rule(allow_anonymous=True)},  # type: ignore[arg-type]
        check_peers=False), None),
    "verifier": (lambda: AuthOptions(  # the options class, not the JWTVerifier
        verifier=_verifier_options(), check_peers=False), None),  # type: ignore[arg-type]
    "verifier[TokenVerifier]": (lambda: AuthOptions(  # the sync core: verify(token, alg, key)
        verifier=TokenVerifier(_verifier_options()), check_peers=False), None),  # type: ignore[arg-type]
    "jwt": (lambda: AuthOptions(
        jwt={"public_methods": ("/grpc.health.v1.Health/*",)},  # type: ignore[arg-type]
        policy=AuthzPolicy()), {"public_methods": ("/grpc.health.v1.Health/*",)}),
}


@pytest.mark.parametrize("case", sorted(_OBJECTS))
def test_auth_options_refuse_an_option_object_of_the_wrong_class(case: str) -> None:
    """A user writes ``AuthOptions(policy={"/pkg.Svc/*": Rule(...)})`` (the rules mapping,
    forgetting the ``AuthzPolicy(rules=...)`` around it), or
    ``AuthOptions(verifier=VerifierOptions(...))`` (the options class, not the
    ``JWTVerifier``).

    Before: both were accepted; the server started and registered, and every call then
    failed ``UNKNOWN`` "Unexpected AttributeError in the handler" ('dict' object has no
    attribute 'evaluate').

    Now: ``ConfigError`` naming ``policy`` / ``verifier`` / ``jwt`` when ``AuthOptions`` is
    built.
    """
    build, value = _OBJECTS[case]
    field = case.split("[")[0]
    with pytest.raises(ConfigError) as info:
        build()
    assert f"{field} must be" in str(info.value), str(info.value)
    if value is not None:
        assert repr(value) in str(info.value)


def test_auth_options_take_a_verifier_with_an_async_verify() -> None:
    """Any object with an ``async verify(token)`` is taken as the verifier (what the JWT
    interceptor awaits), not only a ``JWTVerifier``."""

    class Verifier:
        async def verify(self, token: str) -> Any:
            raise NotImplementedError

    auth = AuthOptions(verifier=Verifier(), check_peers=False)  # type: ignore[arg-type]
    assert len(auth.interceptors(None)) == 1


def test_auth_options_take_a_verifier_whose_async_verify_is_decorated() -> None:
    """A user's verifier whose ``async verify`` carries a plain (sync) decorator, which
    returns the coroutine (``await verifier.verify(token)`` works, as the interceptor
    calls it), was refused (``inspect.iscoroutinefunction`` is false for the wrapper);
    so would a compiled async method be. Any callable ``verify`` that is not a plain
    sync function under its ``functools.wraps`` wrappers is taken; ``TokenVerifier``
    (a sync ``verify``) stays refused (above)."""
    import functools

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)
        return wrapper

    class Verifier:
        @logged
        async def verify(self, token: str) -> Any:
            raise NotImplementedError

    class SyncVerifier:
        def verify(self, token: str) -> Any:
            raise NotImplementedError

    AuthOptions(verifier=Verifier(), check_peers=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="verifier must be"):
        AuthOptions(verifier=SyncVerifier(), check_peers=False)  # type: ignore[arg-type]


_NONE: dict[str, Build] = {
    "exempt_methods": lambda: AuthOptions(exempt_methods=None),  # type: ignore[arg-type]
    "public_methods": lambda: JWTAuthOptions(public_methods=None),  # type: ignore[arg-type]
    "allow_peers": lambda: Rule(allow_peers=None),  # type: ignore[arg-type]
    "deny_peers": lambda: Rule(deny_peers=None),  # type: ignore[arg-type]
    "allow_subjects": lambda: Rule(allow_subjects=None),  # type: ignore[arg-type]
    "deny_subjects": lambda: Rule(deny_subjects=None),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("field", sorted(_NONE))
def test_none_for_a_collection_is_a_config_error_naming_the_field(field: str) -> None:
    """A user writes ``AuthOptions(exempt_methods=None)``, ``JWTAuthOptions(
    public_methods=None)`` or ``Rule(allow_peers=None)`` ("none").

    Before: a bare ``TypeError: 'NoneType' object is not iterable`` that named no field.

    Now: ``ConfigError`` naming the field and quoting ``None``.
    """
    _refused(_NONE[field], field, None)


def test_jwt_method_scopes_are_copied_not_shared_with_the_caller() -> None:
    """A user builds ``JWTAuthOptions(method_scopes=scopes)`` and changes ``scopes``
    afterwards (a loop building options per service from one dict).

    Before: the frozen options kept the caller's dict, so ``method_scopes`` changed under
    them and no longer matched the scopes the interceptor enforces (compiled at
    construction).

    Now: the options hold a read-only copy; changing the caller's dict changes nothing.
    """
    scopes: dict[str, Any] = {"/meshkit.test.Echo/Unary": ["echo:read"]}
    jwt = JWTAuthOptions(method_scopes=scopes)
    scopes["/meshkit.test.Echo/Unary"] = ("admin",)
    scopes["/meshkit.test.Echo/Other"] = ("admin",)
    assert dict(jwt.method_scopes) == {"/meshkit.test.Echo/Unary": ("echo:read",)}
    assert jwt.required_scopes("/meshkit.test.Echo/Unary") == frozenset({"echo:read"})
    with pytest.raises(TypeError):
        jwt.method_scopes["/meshkit.test.Echo/Unary"] = ("admin",)  # type: ignore[index]


_STRINGS: dict[str, tuple[Build, object]] = {
    "issuer": (lambda: VerifierOptions(issuer=b"https://issuer",  # type: ignore[arg-type]
                                       audience="orders"), b"https://issuer"),
    "audience": (lambda: VerifierOptions(issuer="https://issuer",
                                         audience=("orders",)), ("orders",)),  # type: ignore[arg-type]
    "typ": (lambda: _verifier_options(typ=b"at+jwt"), b"at+jwt"),
}


@pytest.mark.parametrize("field", sorted(_STRINGS))
def test_verifier_options_take_strings_for_issuer_audience_and_typ(field: str) -> None:
    """A user reads the issuer, audience or ``typ`` from a file as bytes, or gives the
    audience as a tuple of audiences.

    Before: accepted; ``typ=b"at+jwt"`` then failed with a bare ``TypeError`` when the
    ``TokenVerifier`` was built, and a non-string issuer or audience made every token be
    refused (or fail inside PyJWT) at verification.

    Now: ``ConfigError`` naming the field and quoting the value (the docstring: "the
    only accepted ``iss``", "the accepted ``aud``", "``typ``: required ``typ`` header ...
    ``None`` accepts any").
    """
    build, value = _STRINGS[field]
    _refused(build, field, value)
    assert TokenVerifier(_verifier_options(typ=None)).options.typ is None
