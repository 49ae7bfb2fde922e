"""A WebSocket subscriber not written in Rust, for the system tests.

Usage: ws_client.py URL TOKEN PROJECT_ID N

Subscribes from the beginning, reads half of the N events it expects,
disconnects, reconnects with `since` = the last position it saw, reads the
rest, and prints every position it received as a JSON list.
"""

import asyncio
import json
import sys

import websockets


async def session(url, token, project, since, wanted):
    positions = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token}))
        assert json.loads(await ws.recv())["op"] == "authenticated"
        await ws.send(json.dumps({"op": "subscribe", "project_id": project, "since": since}))
        while len(positions) < wanted:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if frame["op"] == "event":
                assert frame["event"]["specversion"] == "1.0", frame
                positions.append(frame["position"])
            elif frame["op"] not in ("subscribed", "presence"):
                raise RuntimeError(f"unexpected frame {frame}")
    return positions


async def main():
    url, token, project, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    first = await session(url, token, project, 0, n // 2)
    rest = await session(url, token, project, first[-1], n - len(first))
    print(json.dumps(first + rest))


asyncio.run(main())
