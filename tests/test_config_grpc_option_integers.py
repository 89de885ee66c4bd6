"""grpc arguments given as integers of another type than ``int`` (numpy's, read from a
data frame or a numeric config library) take effect as the int they are."""

from __future__ import annotations

import numbers

import grpc
import pytest

import meshkit
from meshkit.errors import ConfigError


class _Int64:
    """An integer that is no ``int``, as numpy's ``np.int64`` (registered as a
    ``numbers.Integral``, with ``__int__`` and ``__index__``; numpy itself is no
    dependency of meshkit's tests)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"_Int64({self.value})"


numbers.Integral.register(_Int64)


async def _refused(server_options: tuple[tuple[str, object], ...]) -> grpc.StatusCode | None:
    """A 100-byte request to a grpc.aio server built with ``server_options``: its status
    code (``None``: answered)."""
    server = grpc.aio.server(options=server_options)  # type: ignore[arg-type]

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.S", {"M": grpc.unary_unary_rpc_method_handler(echo)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await channel.unary_unary("/t.S/M")(b"x" * 100, timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return None
    finally:
        await server.stop(0)


async def test_a_numpy_integer_option_value_is_kept_as_the_int_it_is() -> None:
    """``ServeOptions(server_options=(("grpc.max_receive_message_length",
    np.int64(10)),))`` (here ``_Int64``) passed the check as "an object grpc takes for a
    C pointer" (it has ``__int__`` and is no ``int``), and grpc took it for one: the
    10-byte limit was
    silently not applied (a 100-byte request answered). An integral value is now stored
    as its ``int`` (so the C int range check applies to it too), and the limit holds."""
    opts = meshkit.ServeOptions(insecure=True, server_options=(
        ("grpc.max_receive_message_length", _Int64(10)),))
    (_, value), = opts.server_options
    assert type(value) is int and value == 10
    assert await _refused(opts.server_options) is grpc.StatusCode.RESOURCE_EXHAUSTED
    dial_opts = meshkit.DialOptions(insecure=True, channel_options=(
        ("grpc.max_receive_message_length", _Int64(10)),))
    assert [type(v) for _, v in dial_opts.channel_options] == [int]


def test_a_numpy_integer_beyond_a_c_int_is_refused() -> None:
    """Beyond grpc's C int, as an ``int`` there is."""
    with pytest.raises(ConfigError, match="C int"):
        meshkit.ServeOptions(insecure=True, server_options=(
            ("grpc.max_receive_message_length", _Int64(2**40)),))
