"""Echo backend for the wsproxy interop tests, on Python's websockets.

Run with Debian's /usr/bin/python3 (package python3-websockets). Prints the
port it listens on, then serves until killed. Protocol: data messages are
echoed; "close:CODE:REASON" closes with that code and reason; the close
frame a client sends is recorded under the id in the request's query and
returned by a "report:ID" message as "CODE REASON" (or "none").
"""

import asyncio
import sys
from urllib.parse import parse_qs, urlparse

import websockets

closes = {}


async def handler(ws, path=None):
    conn_id = parse_qs(urlparse(ws.path).query).get("id", [""])[0]
    server_closed = False
    try:
        async for msg in ws:
            if isinstance(msg, str) and msg.startswith("close:"):
                _, code, reason = msg.split(":", 2)
                server_closed = True
                await ws.close(int(code), reason)
                break
            if isinstance(msg, str) and msg.startswith("report:"):
                got = closes.get(msg[len("report:"):])
                await ws.send("none" if got is None else f"{got[0]} {got[1]}")
                continue
            await ws.send(msg)
    except websockets.ConnectionClosed:
        pass
    await ws.wait_closed()
    if conn_id and not server_closed:
        closes[conn_id] = (ws.close_code, ws.close_reason)


async def main():
    server = await websockets.serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=["chat.v1"],
        compression="deflate",
        max_size=None,
        ping_interval=None,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
