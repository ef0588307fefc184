"""Our extension point into hypercorn: permessage-deflate with a bounded window and memory."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, RsvBits

from flowboard.config import Config
from flowboard.server import deflate
from flowboard.server.pipeline import run_server
from flowboard.server.runtime import Runtime
from flowboard.testing.wsclient import open_wire_client

BASE_MS = 1_795_800_000_000


def test_default_settings_keep_the_compressor_at_24_kib() -> None:
    """zlib's deflate memory for the defaults is 2**14 + 2**13 bytes, well under the 64 KiB budget."""
    assert deflate.DeflateSettings().compressor_bytes == 24 * 1024


def test_browser_offer_is_answered_with_our_window() -> None:
    """Chromium's offer (client_max_window_bits without a value) gets our bits for both sides."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=12))
    response = extension.accept("permessage-deflate; client_max_window_bits")
    assert isinstance(response, str)
    assert "server_max_window_bits=12" in response
    assert "client_max_window_bits=12" in response
    assert "no_context_takeover" not in response


def test_a_smaller_window_asked_by_the_client_is_honoured() -> None:
    """A client may ask for a smaller server window than ours; never a bigger one."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=13))
    assert "server_max_window_bits=10" in str(
        extension.accept("permessage-deflate; server_max_window_bits=10")
    )
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=13))
    assert "server_max_window_bits=13" in str(
        extension.accept("permessage-deflate; server_max_window_bits=15")
    )


def test_disabled_declines_the_offer() -> None:
    """With compression off the extension is not negotiated at all."""
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(enabled=False))
    assert extension.accept("permessage-deflate; client_max_window_bits") is None


def test_compressor_uses_the_configured_window_and_mem_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compressor is created with our window bits and memLevel, and its output inflates back."""
    created: list[tuple[Any, ...]] = []
    real_compressobj = zlib.compressobj

    def recording_compressobj(*args: Any) -> Any:
        created.append(args)
        return real_compressobj(*args)

    monkeypatch.setattr(deflate.zlib, "compressobj", recording_compressobj)
    extension = deflate.BoundedDeflate(deflate.DeflateSettings(window_bits=11, mem_level=4, level=6))
    extension.accept("permessage-deflate")
    proto = FrameProtocol(client=False, extensions=[extension])
    payload = b'[1043,["t",[7,3600,10000,1,152]]]' * 3
    _, compressed = extension.frame_outbound(proto, Opcode.TEXT, RsvBits(False, False, False), payload, True)
    assert created == [(6, zlib.DEFLATED, -11, 4)]
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(compressed + b"\x00\x00\xff\xff") == payload


def test_install_replaces_and_uninstall_restores_hypercorns_extension() -> None:
    """The hook is the one name hypercorn's handshake looks up."""
    deflate.install(deflate.DeflateSettings(window_bits=10))
    try:
        made = ws_stream.PerMessageDeflate()  # type: ignore[attr-defined]
        assert isinstance(made, deflate.BoundedDeflate)
        assert made.settings.window_bits == 10
    finally:
        deflate.uninstall()
    assert ws_stream.PerMessageDeflate is PerMessageDeflate  # type: ignore[attr-defined]


@pytest.mark.parametrize("enabled", [True, False])
async def test_real_server_negotiates_per_configuration(
    enabled: bool, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Through hypercorn: the handshake carries our window, or no deflate with --no-deflate."""
    config = Config(
        port=0, sim_history_s=10.0, deflate=enabled, deflate_window_bits=12, db=str(tmp_path / "f.db")
    )
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(
            partial(run_server, config, wall_ms=lambda: BASE_MS + round(trio.current_time() * 1000))
        )
        client = await open_wire_client(runtime.url.replace("http://", "ws://") + "/ws", deflate=True)
        assert client.deflate_negotiated is enabled
        message = await client.receive()
        assert message.text.startswith("[")
        await client.aclose()
        nursery.cancel_scope.cancel()
