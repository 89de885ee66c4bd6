"""A server process for flood tests: one raw-bytes unary method behind meshkit's default
limits, answering like a service that rejects a huge order.

    python -m tests.support.flood_server --registry local:///tmp/r [--limits JSON]

Method ``/meshkit.test.Flood/Place``: waits 5 ms, then aborts ``INVALID_ARGUMENT``
"rejected <n> bytes" (the request was read whole). ``--limits`` takes ``ServerLimits``
keyword arguments as a JSON object (default: none, meshkit's defaults). Prints
``port <n> pid <pid>`` once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import grpc

import meshkit
from meshkit.discovery import registry_from_uri
from meshkit.server import ServerLimits

SERVICE = "meshkit.test.Flood"


def add_flood(_servicer: Any, server: Any) -> None:
    """Add the flood service (``Place``) to ``server``."""
    async def place(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.005)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"rejected {len(request)} bytes")
        raise AssertionError("unreachable")

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Place": grpc.unary_unary_rpc_method_handler(place)}),))


async def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--limits", default="{}")
    args = parser.parse_args()
    limits = ServerLimits(**json.loads(args.limits))

    def started(srv: meshkit.MeshServer) -> None:
        print(f"port {srv.port} pid {os.getpid()}", flush=True)

    await meshkit.serve("flood", [(add_flood, None)],
                        registry=registry_from_uri(args.registry),
                        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                     admin=None, limits=limits),
                        on_started=started)


if __name__ == "__main__":
    asyncio.run(main())
