"""``ServeOptions.server_options`` naming gRPC core's keepalive timeout
(``grpc.keepalive_timeout_ms``, GRPC_ARG_KEEPALIVE_TIMEOUT_MS in grpc's doc/keepalive.md)
set the timeout grpc core applies to an unanswered keepalive ping: ``ServerLimits``
keeps ``grpc.http2.ping_timeout_ms`` (the one grpc core 1.85 arms, grpc/grpc#39239) in
step with it instead of leaving its own ``keepalive_timeout_s`` there."""

from __future__ import annotations

from typing import Any

import meshkit


def _server_args(limits: meshkit.ServerLimits,
                 options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The arguments a MeshServer gives grpc: the limits' own, the caller's over them."""
    return {**dict(limits.channel_args(options)), **dict(options)}


def test_a_keepalive_timeout_override_sets_the_ping_timeout_too() -> None:
    """An override of ``grpc.keepalive_timeout_ms`` alone moves the ping timeout with it
    (it stayed at ``keepalive_timeout_s``, 20 s: a black-holed client's call held its
    slot 20.7 s with the override at 500 ms and keepalive_time_s=0.5, measured); an
    explicit ``grpc.http2.ping_timeout_ms`` wins; without overrides nothing changes."""
    limits = meshkit.ServerLimits(keepalive_time_s=0.5)
    plain = dict(limits.channel_args())
    assert plain["grpc.http2.ping_timeout_ms"] == plain["grpc.keepalive_timeout_ms"] == 20000
    assert dict(limits.channel_args(())) == plain
    args = _server_args(limits, (("grpc.keepalive_timeout_ms", 500),))
    assert args["grpc.http2.ping_timeout_ms"] == 500
    assert args["grpc.keepalive_timeout_ms"] == 500
    args = _server_args(limits, (("grpc.keepalive_timeout_ms", 500),
                                 ("grpc.http2.ping_timeout_ms", 700)))
    assert args["grpc.http2.ping_timeout_ms"] == 700
    # other overrides leave the limits' own arguments alone (the server applies them)
    args = dict(limits.channel_args((("grpc.max_connection_age_ms", 1000),)))
    assert args == plain


async def test_a_mesh_server_gives_grpc_the_overridden_ping_timeout(
        registry: Any, monkeypatch: Any) -> None:
    """A MeshServer started with ``server_options`` naming ``grpc.keepalive_timeout_ms``
    builds its grpc server with ``grpc.http2.ping_timeout_ms`` at the same value (it gave
    grpc the limits' 20 s while ``ServerLimits.channel_args`` alone was right)."""
    import grpc

    from tests.support.echo import add_echo

    seen: list[dict[str, Any]] = []
    real = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs.get("options") or ()))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", spy)
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, grace_s=0.5,
                                 server_options=(("grpc.keepalive_timeout_ms", 500),)))
    await srv.start()
    try:
        assert seen and seen[-1]["grpc.http2.ping_timeout_ms"] == 500, seen
        assert seen[-1]["grpc.keepalive_timeout_ms"] == 500
    finally:
        await srv.drain()
