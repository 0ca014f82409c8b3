"""`python -m tools.echo_server --port N`: a bare aiortc echo server, the live benchmark's reference.

Each peer's video comes straight back, no inference, no drawing, aiortc as it ships (its own jitter buffer,
which releases a frame only when the next one starts): the round trip any aiortc-based server starts from.
Same signalling as the media server (POST /offer -> answer with a peer id; GET /readyz), loopback host
candidates as `--host-addresses` says.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from collections.abc import Sequence

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from rtc.ice import HostAddressOverride

PCS = web.AppKey("pcs", set[RTCPeerConnection])


class EchoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> Frame | Packet:
        return await self._source.recv()


async def offer(request: web.Request) -> web.Response:
    body = await request.json()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    request.app[PCS].add(pc)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            pc.addTrack(EchoTrack(track))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            request.app[PCS].discard(pc)
            await pc.close()

    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    local = pc.localDescription
    return web.json_response({"sdp": local.sdp, "type": local.type, "peer_id": uuid.uuid4().hex[:12]})


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"model": {"name": "none", "backend": "echo", "provider": "aiortc"}})


def create_app(host_addresses: Sequence[str]) -> web.Application:
    override = HostAddressOverride(host_addresses)
    app = web.Application()
    app[PCS] = set()
    app.router.add_post("/offer", offer)
    app.router.add_get("/readyz", readyz)

    async def startup(app: web.Application) -> None:
        override.install()

    async def cleanup(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in app[PCS]), return_exceptions=True)
        override.uninstall()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.echo_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host-addresses", nargs="*", default=["127.0.0.1"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    web.run_app(create_app(args.host_addresses), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
