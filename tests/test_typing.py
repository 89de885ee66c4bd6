"""meshkit's type hints as a ``mypy --strict`` user sees them.

meshkit ships ``py.typed`` and its README says ``make lint`` runs ``mypy --strict``; teams
type-check their own services against it. Each test writes a small user program to a
temporary directory and runs mypy on it in-process (``mypy.api.run``), against this
checkout's ``meshkit`` (found through ``mypy_path``, its own errors silenced as for an
installed package: ``follow_imports = silent``), in one run for the module over every
program, its cache started from a copy of the checkout's ``.mypy_cache`` when there is
one (``make test`` runs ``mypy`` first).

A program that is correct (runs as written, follows the README or a docstring) must
type-check with no error; a program that fails at run time must get an error, as the same
program over ``grpc.aio`` does.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import grpc
import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[1]

# mypy in-process: no timing is asserted; the limit only stops a hung run
pytestmark = pytest.mark.timeout(300)


class Checker:
    """Runs ``mypy --strict`` once over every user program of this module (``_PROGRAMS``),
    each in a folder of its own, and answers each test with its own program's errors.

    One run instead of one per test, from a copy of the checkout's mypy cache when there
    is one; the programs are still checked one by one, with their errors kept apart by
    file."""

    def __init__(self, base: Path, programs: dict[str, str]) -> None:
        self.base = base
        self.cache = base / "mypy-cache"
        self.config = base / "mypy.ini"
        self.programs = programs
        self.config.write_text(textwrap.dedent(f"""\
            [mypy]
            python_version = 3.11
            mypy_path = {ROOT}

            # as for an installed package: its types are used, its own errors are not shown
            [mypy-meshkit.*]
            follow_imports = silent
            """))
        self._errors: dict[str, list[str]] | None = None

    def _check_all(self) -> dict[str, list[str]]:
        # mypy's cache of this checkout (``make test`` runs ``mypy`` just before pytest)
        # as the starting point, copied: the standard library's and grpc's types are
        # read from it instead of analysed again (~18 s of CPU -> ~5 s); mypy checks
        # each entry against the module's source and options, and analyses again what
        # differs (meshkit, whose options differ here, and the programs)
        seed = ROOT / ".mypy_cache"
        seeded = seed.is_dir()
        if seeded:
            try:
                shutil.copytree(seed, self.cache)
            except (OSError, shutil.Error):  # being written: start from nothing
                shutil.rmtree(self.cache, ignore_errors=True)
        # one directory per program: mypy puts a checked file's directory on its search
        # path; the programs' module names are unique and none imports another
        paths = {}
        for name, source in self.programs.items():
            folder = self.base / name
            folder.mkdir()
            paths[name] = folder / f"{name}.py"
            paths[name].write_text(textwrap.dedent(source))
        args = ["--strict", "--config-file", str(self.config), "--cache-dir", str(self.cache),
                "--no-error-summary", "--show-error-codes", "--hide-error-context",
                "--show-column-numbers", *map(str, paths.values())]
        try:
            out, err, status = mypy_api.run(args)
            unreadable = status not in (0, 1) or "INTERNAL ERROR" in out + err
        except Exception:  # e.g. sqlite3.DatabaseError
            if not seeded:
                raise
            unreadable = True
        if seeded and unreadable:
            # a copy taken while mypy wrote it: once more from nothing
            shutil.rmtree(self.cache, ignore_errors=True)
            out, err, status = mypy_api.run(args)
        assert status in (0, 1) and "INTERNAL ERROR" not in out + err, (status, out, err)
        errors = [line for line in out.splitlines() if ": error:" in line]
        # each program's own lines (an error inside meshkit would be silenced anyway)
        return {name: [line.split(f"{path}:", 1)[1] for line in errors
                       if line.startswith(f"{path}:")]
                for name, path in paths.items()}

    def run(self, name: str, source: str) -> list[str]:
        """The errors mypy reports on the program ``source`` (dedented, registered as
        ``name`` in ``_PROGRAMS``), as ``"<line>:<col>: error: ... [code]"``, its own
        lines only."""
        assert self.programs[name] == source, f"{name} is not the program registered"
        if self._errors is None:
            self._errors = self._check_all()
        return self._errors[name]


_PROGRAMS: dict[str, str] = {}


def _program(name: str, source: str) -> str:
    """Registers the user program ``source`` as ``name`` for the module's mypy run."""
    assert name not in _PROGRAMS, name
    _PROGRAMS[name] = source
    return source


@pytest.fixture(scope="module")
def mypy_check(tmp_path_factory: pytest.TempPathFactory) -> Checker:
    return Checker(tmp_path_factory.mktemp("typing"), _PROGRAMS)


def _line_of(source: str, mark: str) -> int:
    """The 1-based line of the dedented ``source`` that holds ``mark``."""
    lines = textwrap.dedent(source).splitlines()
    return next(i for i, text in enumerate(lines, 1) if mark in text)


def _on_line(errors: list[str], line: int, code: str) -> bool:
    return any(e.startswith(f"{line}:") and f"[{code}]" in e for e in errors)


# Hand-written typed messages: generated *_pb2 types are Any without types-protobuf, and
# would hide exactly what is checked here.
MESSAGES = """\
    from __future__ import annotations
    from collections.abc import AsyncIterator

    import grpc
    import meshkit


    class Req:
        def SerializeToString(self) -> bytes:
            return b""


    class Resp:
        @classmethod
        def FromString(cls, data: bytes) -> Resp:
            return cls()


    class Other:
        def SerializeToString(self) -> bytes:
            return b""


    async def requests() -> AsyncIterator[Req]:
        yield Req()
"""


def _calls(channel_type: str, suffix: str) -> str:
    return f"""

    async def unary_unary_{suffix}(ch: {channel_type}) -> Resp:
        uu = ch.unary_unary("/p.S/UU", request_serializer=Req.SerializeToString,
                            response_deserializer=Resp.FromString)
        return await uu(Req(), timeout=1.0)


    async def unary_stream_{suffix}(ch: {channel_type}) -> Resp:
        us = ch.unary_stream("/p.S/US", request_serializer=Req.SerializeToString,
                             response_deserializer=Resp.FromString)
        async for reply in us(Req(), timeout=1.0):
            return reply
        raise LookupError


    async def stream_unary_{suffix}(ch: {channel_type}) -> Resp:
        su = ch.stream_unary("/p.S/SU", request_serializer=Req.SerializeToString,
                             response_deserializer=Resp.FromString)
        return await su(requests())


    async def stream_stream_{suffix}(ch: {channel_type}) -> Resp:
        ss = ch.stream_stream("/p.S/SS", request_serializer=Req.SerializeToString,
                              response_deserializer=Resp.FromString)
        async for reply in ss(requests()):
            return reply
        raise LookupError


    async def writes_{suffix}(ch: {channel_type}) -> Resp:
        su = ch.stream_unary("/p.S/SU", request_serializer=Req.SerializeToString,
                             response_deserializer=Resp.FromString)
        call = su()
        await call.write(Req())
        await call.done_writing()
        return await call
"""


_CHANNEL_TYPES = _program("channel_types", MESSAGES + _calls("grpc.aio.Channel", "aio")
                          + _calls("meshkit.MeshChannel", "mesh"))


def test_mesh_channel_multicallables_keep_message_types(mypy_check: Checker) -> None:
    """A user builds multicallables on the channel ``dial()`` returns (what generated stubs
    do, and what a hand-written typed client does) and returns the awaited response from a
    function annotated ``-> Resp``.

    Was: ``MeshChannel.unary_unary/unary_stream/stream_unary/stream_stream`` returned
    meshkit's private multicallables (``grpc.aio.*MultiCallable[Any, Any]``) whose
    ``__call__`` was typed ``-> Any``, so every response was ``Any`` and ``mypy --strict``
    rejected the correct program (``no-any-return``, once per kind). The same code over a
    ``grpc.aio.Channel`` (types-grpcio: ``unary_unary(...) -> UnaryUnaryMultiCallable[
    _TRequest, _TResponse]``, inferred from the serializers) type-checks cleanly.

    Should: ``dial()`` is documented to return "a ``grpc.aio.Channel``; give it to any
    generated stub"; a subclass must not lose the base class's generic typing (Liskov: an
    override returning ``[Any, Any]`` silently widens it). The control run over
    ``grpc.aio.Channel`` proves the program is right."""
    source = _CHANNEL_TYPES
    errors = mypy_check.run("channel_types", source)
    control = [e for e in errors if "_aio" in e]
    assert not control, f"the control program over grpc.aio.Channel has errors: {control}"
    assert errors == [], (
        "correct code over meshkit.MeshChannel rejected by mypy --strict "
        "(its multicallables return Any):\n" + "\n".join(errors))


_CHANNEL_WRONG_REQUEST = _program("channel_wrong_request", MESSAGES + """

    async def other_requests() -> AsyncIterator[Other]:
        yield Other()


    async def wrong_aio(ch: grpc.aio.Channel) -> None:
        uu = ch.unary_unary("/p.S/UU", request_serializer=Req.SerializeToString,
                            response_deserializer=Resp.FromString)
        await uu(Other())  # line A


    async def wrong_mesh() -> None:
        async with meshkit.dial("svc", options=meshkit.DialOptions(insecure=True)) as ch:
            uu = ch.unary_unary("/p.S/UU", request_serializer=Req.SerializeToString,
                                response_deserializer=Resp.FromString)
            await uu(Other())  # line B
            ss = ch.stream_stream("/p.S/SS", request_serializer=Req.SerializeToString,
                                  response_deserializer=Resp.FromString)
            async for _ in ss(other_requests()):  # line C
                pass
    """)


def test_mesh_channel_flags_a_wrong_request_type(mypy_check: Checker) -> None:
    """A user passes the wrong message to a method (``Other`` where the method's serializer
    takes ``Req``), to a unary and to a streaming method.

    Was: over ``grpc.aio.Channel`` mypy reports ``arg-type`` (types-grpcio binds
    ``_TRequest`` to ``Req`` from ``request_serializer``); over the ``MeshChannel`` that
    ``meshkit.dial()`` returns the same mistake passed ``mypy --strict`` (the
    multicallable's ``__call__`` took ``request: Any``) and failed only at run time
    (``RequestSerializationError``, or worse a message of the wrong type serialized).

    Should: the mistake is caught statically exactly as with grpc.aio, which is the point
    of shipping ``py.typed``."""
    source = _CHANNEL_WRONG_REQUEST
    errors = mypy_check.run("channel_wrong_request", source)
    assert _on_line(errors, _line_of(source, "# line A"), "arg-type"), (
        f"control: grpc.aio.Channel should flag the wrong request: {errors}")
    assert _on_line(errors, _line_of(source, "# line B"), "arg-type"), (
        "a request of the wrong type passed to a MeshChannel unary multicallable is "
        f"accepted by mypy --strict: {errors}")
    assert _on_line(errors, _line_of(source, "# line C"), "arg-type"), (
        "a request stream of the wrong type passed to a MeshChannel stream multicallable "
        f"is accepted by mypy --strict: {errors}")


_LAZY_NAMES = _program("lazy_names", """\
        import meshkit.discovery
        from meshkit.observability import TelemetryOption  # line A
        from meshkit.discovery import ConsulRegistry, EtcdOptions
        from meshkit.observability import JsonLinesSpanExporter, render_trace


        def build() -> None:
            meshkit.discovery.LocalRegistri()  # line B
            TelemetryOption()


        def lazy() -> tuple[type[ConsulRegistry], EtcdOptions, str]:
            exporter: JsonLinesSpanExporter | None = None
            del exporter
            return ConsulRegistry, meshkit.discovery.EtcdOptions(), render_trace([])
    """)


def test_misspelled_names_of_lazy_modules_are_errors(mypy_check: Checker) -> None:
    """A user misspells a name imported from ``meshkit.observability`` or
    ``meshkit.discovery`` (``TelemetryOption`` for ``TelemetryOptions``, ``LocalRegistri``).

    Was: both packages define a module-level ``def __getattr__(name) -> Any`` for their
    lazy imports (PEP 562). For a type checker a module ``__getattr__`` means "every
    attribute exists and is Any" (mypy and pyright semantics), so
    ``from meshkit.observability import TelemetryOption`` and
    ``meshkit.discovery.LocalRegistri(...)`` passed ``mypy --strict`` with no error and the
    misspelled object was ``Any`` everywhere it flowed; at run time the import raises
    ``ImportError`` / ``AttributeError``.

    Should: mypy reports ``attr-defined`` as it does for ``meshkit.dail``; the lazy names
    themselves (imported for checkers under ``TYPE_CHECKING``) keep their types and still
    load on first use at run time."""
    source = _LAZY_NAMES
    errors = mypy_check.run("lazy_names", source)
    with pytest.raises(ImportError):
        exec("from meshkit.observability import TelemetryOption", {})
    with pytest.raises(AttributeError):
        exec("import meshkit.discovery\nmeshkit.discovery.LocalRegistri", {})
    # the lazy names still resolve at run time (etcd needs no extra; the others may)
    exec("from meshkit.discovery import EtcdOptions, EtcdRegistry", {})
    line_a, line_b = _line_of(source, "# line A"), _line_of(source, "# line B")
    assert _on_line(errors, line_a, "attr-defined") and _on_line(errors, line_b, "attr-defined"), (
        "misspelled meshkit.observability / meshkit.discovery names pass mypy --strict "
        f"(module __getattr__ -> Any) though they fail at run time; mypy said: {errors}")
    assert all(e.split(":", 1)[0] in (str(line_a), str(line_b), str(line_b + 1))
               for e in errors), f"the lazily imported names lost their types: {errors}"


_LIST_OPTIONS_HEAD = """\
    from typing import Any

    import grpc
    import meshkit
    from meshkit.balancer import Subset


    class Audit(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any,
                                    handler_call_details: grpc.HandlerCallDetails) -> Any:
            return await continuation(handler_call_details)


    class Stamp(meshkit.ClientInterceptor):
        pass


    class PerAttempt(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                        request: Any) -> Any:
            return await continuation(client_call_details, request)
"""

_LIST_OPTIONS = {
    "dial": """

    def options() -> meshkit.DialOptions:
        return meshkit.DialOptions(insecure=True, interceptors=[Stamp()],
                                   attempt_interceptors=[PerAttempt()],
                                   filters=[Subset(meta={"version": "v2"})],
                                   channel_options=[("grpc.max_receive_message_length",
                                                     8 << 20)])


    def stored(dial: meshkit.DialOptions) -> int:
        extra: tuple[tuple[str, Any], ...] = dial.channel_options + (("grpc.x", 1),)
        return len(extra) + len(dial.filters + dial.interceptors)  # 2 + 2
""",
    "serve": """

    def options() -> meshkit.ServeOptions:
        return meshkit.ServeOptions(insecure=True, interceptors=[Audit()], tags=["v2"],
                                    server_options=[("grpc.so_reuseport", 1)])


    def stored(serve: meshkit.ServeOptions) -> int:
        chain: tuple[grpc.aio.ServerInterceptor, ...] = serve.interceptors + (Audit(),)
        extra: tuple[tuple[str, Any], ...] = serve.server_options + (("grpc.x", 1),)
        return len(chain) + len(extra) + len(serve.tags + ("v3",))  # 2 + 2 + 2
""",
}


for _kind, _options in _LIST_OPTIONS.items():
    _program(f"list_options_{_kind}", _LIST_OPTIONS_HEAD + _options)


@pytest.mark.parametrize("kind", [
    "dial",
    "serve",
])
def test_list_valued_options_type_check_like_grpc_aio(mypy_check: Checker, kind: str) -> None:
    """A user passes lists where grpc.aio takes any sequence: ``ServeOptions(interceptors=
    [Audit()], server_options=[...])`` (grpc.aio.server(interceptors: Sequence[...],
    options: Sequence[...])), ``DialOptions(interceptors=[...], attempt_interceptors=[...],
    filters=[Subset(...)], channel_options=[...])`` (grpc.aio.insecure_channel(options:
    Sequence[...], interceptors: Sequence[...])), and ``ServeOptions(tags=[...])`` as
    ``Instance`` takes them.

    Was: every one of them runs (``__post_init__`` copies ``interceptors``,
    ``attempt_interceptors``, ``filters`` and ``tags`` with ``tuple()``, grpc takes the
    option lists as they are; this test builds them), but the fields were annotated
    ``tuple[X, ...]``, so ``mypy --strict`` rejected each list with ``arg-type``
    ("list[Audit]"; expected "tuple[ServerInterceptor, ...]").

    Should: the options accept what they accept at run time and what the grpc.aio calls
    they stand in for accept (``Sequence[X]``), and store the tuple they make, which is
    what reading the attribute gives (typed as a tuple, so ``options.interceptors + (x,)``
    still type-checks)."""
    source = _LIST_OPTIONS_HEAD + _LIST_OPTIONS[kind]
    errors = mypy_check.run(f"list_options_{kind}", source)
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(source), namespace)
    options = namespace["options"]()  # type: ignore[operator]  # they run
    assert namespace["stored"](options) == {"dial": 4, "serve": 6}[kind]  # type: ignore[operator]
    assert errors == [], (
        "list-valued options that work at run time (and that grpc.aio accepts as "
        "Sequence) are rejected by mypy --strict:\n" + "\n".join(errors))


@pytest.mark.parametrize("kind", [
    "dial",
    "serve",
])
def test_list_valued_options_are_stored_as_tuples(kind: str) -> None:
    """What a ``Sequence`` option is given as is copied into a tuple when the options are
    built: a list the caller changes afterwards does not change the frozen options
    (``channel_options`` and ``server_options`` were kept as given, the caller's list
    itself); one string, which grpc would take as a list of characters, is refused."""
    import meshkit
    from meshkit.errors import ConfigError

    given = [("grpc.max_receive_message_length", 8 << 20)]
    if kind == "dial":
        built = meshkit.DialOptions(insecure=True, channel_options=given).channel_options
        with pytest.raises(ConfigError, match="channel_options"):
            meshkit.DialOptions(insecure=True, channel_options="grpc.x")  # type: ignore[arg-type]
    else:
        serve = meshkit.ServeOptions(insecure=True, server_options=given, tags=["v2"])
        built = serve.server_options
        assert serve.tags == ("v2",)
        with pytest.raises(ConfigError, match="server_options"):
            meshkit.ServeOptions(insecure=True, server_options="grpc.x")  # type: ignore[arg-type]
    given.append(("grpc.so_reuseport", 0))
    assert built == (("grpc.max_receive_message_length", 8 << 20),)


_ANY_COLLECTIONS = _program("any_collections", """\
        import dataclasses

        import grpc
        from meshkit.balancer import OutlierOptions
        from meshkit.discovery import Instance
        from meshkit.resilience import RetryPolicy


        def build() -> tuple[Instance, RetryPolicy, OutlierOptions]:
            inst = Instance(service="orderd", instance_id="orderd-1", host="127.0.0.1",
                            port=50051, tags=["v2", "canary"])
            policy = RetryPolicy(retryable_codes={grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.RESOURCE_EXHAUSTED})
            outlier = OutlierOptions(failure_codes={grpc.StatusCode.UNAVAILABLE,
                                                    grpc.StatusCode.INTERNAL})
            return inst, policy, outlier


        def read(inst: Instance, policy: RetryPolicy, outlier: OutlierOptions) -> int:
            tags: tuple[str, ...] = inst.tags + ("zone-a",)
            codes: frozenset[grpc.StatusCode] = policy.retryable_codes | outlier.failure_codes
            again = dataclasses.replace(policy, retryable_codes=[grpc.StatusCode.ABORTED])
            return len(tags) + len(codes) + len(again.retryable_codes)


        def wrong() -> None:
            RetryPolicy(retryable_codes={14})  # line A
            Instance(service="s", instance_id="s-1", host="h", port=1, tags=[2])  # line B
    """)


def test_documented_any_collection_options_type_check(mypy_check: Checker) -> None:
    """A user follows the docstrings: ``Instance(tags=...)`` takes "any collection of
    strings, not one string", and ``RetryPolicy(retryable_codes=...)`` /
    ``OutlierOptions(failure_codes=...)`` take status codes, "default ``{UNAVAILABLE}``",
    a string being the only collection refused (``check_status_codes`` makes a frozenset
    of any iterable).

    Was: ``Instance(..., tags=["v2"])``, ``RetryPolicy(retryable_codes={UNAVAILABLE,
    RESOURCE_EXHAUSTED})`` and ``OutlierOptions(failure_codes={...})`` all run (this test
    builds them), but the fields were annotated ``tuple[str, ...]`` and
    ``frozenset[grpc.StatusCode]``, so ``mypy --strict`` rejected a list of tags and a
    set literal of codes (``arg-type``).

    Should: the documented forms type-check (``Collection[str]`` /
    ``Collection[grpc.StatusCode]``), and ``dataclasses.replace`` takes them too; the
    normalised attribute stays a tuple / frozenset for readers; a collection of the wrong
    items is still an error. (One string is a ``Collection[str]`` to a checker: that one
    stays a run-time check, ``ConfigError`` quoting it.)"""
    source = _ANY_COLLECTIONS
    errors = mypy_check.run("any_collections", source)
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(source), namespace)
    inst, policy, outlier = namespace["build"]()  # type: ignore[operator]
    assert inst.tags == ("v2", "canary") and policy.retryable_codes == frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})  # normalised
    assert isinstance(outlier.failure_codes, frozenset)
    assert namespace["read"](inst, policy, outlier) == 3 + 3 + 1  # type: ignore[operator]
    line_a, line_b = _line_of(source, "# line A"), _line_of(source, "# line B")
    wrong_lines = {int(e.split(":", 1)[0]) for e in errors}
    assert {line_a, line_b} <= wrong_lines, (
        f"a collection of the wrong item type passes mypy --strict: {errors}")
    assert [e for e in errors if not e.startswith((f"{line_a}:", f"{line_b}:"))] == [], (
        "documented collection arguments are rejected by mypy --strict:\n"
        + "\n".join(errors))


def test_normalised_fields_read_as_slots_with_normalised_defaults() -> None:
    """The options whose fields are given as any collection and stored normalised
    (``meshkit._fields.Normalised``) keep a plain slot for each such field, read on the
    per-call path (``OutlierOptions.failure_codes`` on each outcome) as fast as before,
    and their defaults are the normalised values; on a class without slots the typing aid
    refuses to act as storage (``TypeError``) instead of silently holding values."""
    import dataclasses
    import types

    import meshkit
    from meshkit._fields import Normalised
    from meshkit.balancer import OutlierOptions
    from meshkit.discovery import Instance
    from meshkit.resilience import RetryPolicy

    expected = {
        (Instance, "tags"): (),
        (RetryPolicy, "retryable_codes"): frozenset({grpc.StatusCode.UNAVAILABLE}),
        (OutlierOptions, "failure_codes"): OutlierOptions().failure_codes,
        (meshkit.DialOptions, "interceptors"): (),
        (meshkit.DialOptions, "attempt_interceptors"): (),
        (meshkit.DialOptions, "filters"): (),
        (meshkit.DialOptions, "channel_options"): (),
        (meshkit.ServeOptions, "interceptors"): (),
        (meshkit.ServeOptions, "server_options"): (),
        (meshkit.ServeOptions, "tags"): (),
    }
    for (cls, name), default in expected.items():
        assert isinstance(cls.__dict__[name], types.MemberDescriptorType), (cls, name)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert fields[name].default == default, (cls, name, fields[name].default)
        assert "Normalised[" in str(fields[name].type), (cls, name, fields[name].type)

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        items: Normalised[list[int], tuple[int, ...]] = Normalised(())  # noqa: RUF009

    with pytest.raises(TypeError, match="slots=True"):
        NoSlots(items=[1])


_VERIFIER_KWARGS = _program("verifier_kwargs", """\
        from meshkit.messaging import MessageVerifier


        def verifier() -> MessageVerifier:
            return MessageVerifier.from_file("ca.pem",  # line A
                                             allowed_publisher=("spiffe://td/svc/orderd",))


        def verifier2() -> MessageVerifier:
            return MessageVerifier.from_file("ca.pem", max_entries="256")  # line B


        def right() -> MessageVerifier:
            return MessageVerifier.from_file("ca.pem", max_entries=64,
                                             allowed_publishers=["spiffe://td/svc/orderd"])
    """)


def test_message_verifier_from_file_checks_its_keywords(mypy_check: Checker) -> None:
    """A user builds a verifier from a CA file with a misspelled keyword:
    ``MessageVerifier.from_file("ca.pem", allowed_publisher=("spiffe://td/svc/orderd",))``
    (``allowed_publishers``), or a wrong type (``max_entries="256"``).

    Was: ``from_file(cls, ca_file, **kwargs: object)`` forwarded to the constructor behind
    a ``# type: ignore[arg-type]``, so ``mypy --strict`` accepted any keyword of any type;
    at run time the call fails with ``TypeError`` (or ``ConfigError``) when the consumer
    starts.

    Should: ``from_file`` spells out the constructor's keywords, so the checker sees them
    and the correct call type-checks."""
    source = _VERIFIER_KWARGS
    errors = mypy_check.run("verifier_kwargs", source)
    line_a, line_b = _line_of(source, "# line A"), _line_of(source, "# line B")
    lines = {int(e.split(":", 1)[0]) for e in errors}
    assert lines & {line_a, line_a + 1} and line_b in lines, (
        "MessageVerifier.from_file accepts any keyword of any type under mypy --strict: "
        f"{errors}")
    assert lines <= {line_a, line_a + 1, line_b}, f"the right call is refused: {errors}"


_SERVER_CHAIN = _program("server_chain", """\
        import meshkit
        import grpc


        def chain() -> tuple[grpc.aio.ServerInterceptor, ...]:
            return meshkit.server_chain("userd", meshkit.ServeOptions(insecure=True))


        def stats(channel: meshkit.MeshChannel, server: meshkit.MeshServer
                  ) -> tuple[meshkit.ChannelStats, meshkit.ServerStats, int]:
            snapshot = channel.stats()
            endpoints: tuple[meshkit.EndpointStats, ...] = tuple(snapshot.endpoints)
            return snapshot, server.stats(), len(endpoints)
    """)


def test_server_chain_is_at_its_documented_path(mypy_check: Checker) -> None:
    """A user follows ``meshkit.observability``'s docstring ("Chain order. Server:
    telemetry -> deadline -> authn -> authz -> rate limit -> handler
    (:func:`meshkit.server_chain`, the one place it is written ...)") to inspect the chain
    ``serve()`` installs: ``meshkit.server_chain("userd", options)``, and annotates what
    ``stats()`` returns.

    Was: ``server_chain`` is in ``meshkit.server.__all__`` but ``meshkit`` neither
    imported nor listed it, so ``meshkit.server_chain`` was an ``AttributeError`` and mypy
    said "Module has no attribute". The typed snapshots the public ``stats()`` methods
    return (``ChannelStats``, ``ServerStats``) were likewise only in the private
    ``meshkit._stats``.

    Should: a documented name is importable where it is documented: ``meshkit`` re-exports
    ``server_chain`` and the snapshot types, and lists them in ``__all__``."""
    source = _SERVER_CHAIN
    errors = mypy_check.run("server_chain", source)
    import meshkit

    for name in ("server_chain", "ChannelStats", "ServerStats", "EndpointStats"):
        assert hasattr(meshkit, name) and name in meshkit.__all__, (
            f"meshkit.{name} (documented) is missing; mypy: {errors}")
    assert meshkit.server_chain("userd", meshkit.ServeOptions(insecure=True))
    assert errors == []


_TLS_PATHS = _program("tls_paths", """\
        from pathlib import Path

        from meshkit.auth import TLSOptions


        def tls() -> TLSOptions:
            return TLSOptions(ca_file="certs/ca.pem", cert_file=Path("certs/userd.pem"),
                              key_file="certs/userd.key", allowed_peers=["spiffe://t/svc/a"])


        def files(t: TLSOptions) -> tuple[Path, tuple[str, ...]]:
            return t.ca_file, t.allowed_peers
    """)


def test_tls_options_docstring_example_type_checks(mypy_check: Checker) -> None:
    """A user copies ``TLSOptions``' own docstring example: ``TLSOptions(ca_file=
    "certs/ca.pem", cert_file="certs/userd.pem", key_file="certs/userd.key")``, with a
    list of allowed peers. The fields were annotated ``Path`` and ``tuple`` although the
    options convert what they get, and every other file argument of ``meshkit.auth``
    takes ``str | os.PathLike[str]``: ``mypy --strict`` refused the documented example
    three times. The constructor takes paths and any sequence; the fields still read as
    ``Path`` and ``tuple``."""
    source = _TLS_PATHS
    errors = mypy_check.run("tls_paths", source)
    assert errors == [], "\n".join(errors)


def test_tls_options_docstring_shows_what_serve_takes(tmp_path: Path) -> None:
    """``TLSOptions``' docstring showed ``ServeOptions(credentials=tls.server_credentials(),
    interceptors=(tls.peer_interceptor(), ...))``, which ``ServeOptions`` refuses
    (``ConfigError``: serve() orders the mesh's checks itself). It shows
    ``ServeOptions(tls=tls)`` and ``DialOptions(tls=tls)``, which work; and
    ``dataclasses.replace`` still builds new options from the written-out constructor."""
    import dataclasses

    import meshkit
    from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir

    doc = TLSOptions.__doc__ or ""
    assert "ServeOptions(tls=tls)" in doc and "DialOptions(tls=tls)" in doc
    assert "interceptors=(tls.peer_interceptor()" not in doc
    init_ca_dir(tmp_path, trust_domain="mesh.test")
    files = issue_into_dir(tmp_path, "userd")
    tls = TLSOptions(ca_file=str(files.ca_file), cert_file=files.cert_file,
                     key_file=str(files.key_file), allowed_peers=["spiffe://mesh.test/svc/*"])
    assert isinstance(tls.ca_file, Path) and tls.allowed_peers == ("spiffe://mesh.test/svc/*",)
    meshkit.ServeOptions(tls=tls)
    meshkit.DialOptions(tls=tls)
    again = dataclasses.replace(tls, reload_interval_s=1.0)
    assert again.reload_interval_s == 1.0 and again.spiffe_id == tls.spiffe_id
