"""The v1 compatibility endpoint ``/ws/stream`` (LEGACY_V1.md). Not implemented yet."""

from __future__ import annotations

from quart import websocket

from flowboard.server.runtime import Runtime


async def serve_v1(runtime: Runtime) -> None:
    await websocket.accept()
    await websocket.close(1011, "the v1 endpoint is not implemented yet")
