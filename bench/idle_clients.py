#!/usr/bin/env python3
"""Holds N idle keep-alive connections open on a server (loopback only), for
bench/idle_connections.sh.

Each connection sends one `GET /healthz`, reads the whole response, and then sits idle. Once all
N have their answer, prints `held N` and waits for a line on stdin (or its end); then counts how
many the server still holds open, prints `still open K`, and closes them all.

    bench/idle_clients.py 127.0.0.1:3000 10000

Bounded: at most OPENING connects in flight at once, every step under a deadline.
"""

import asyncio
import sys

OPENING = 200
DEADLINE = 120.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


async def one(host, port, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return reader, writer


async def still_open(reader):
    """True while the server has neither closed nor reset the connection."""
    try:
        data = await asyncio.wait_for(reader.read(1), 0.001)
    except asyncio.TimeoutError:
        return True
    except OSError:
        return False
    return bool(data)


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    assert host.startswith("127."), "loopback only"
    n = int(sys.argv[2])
    gate = asyncio.Semaphore(OPENING)
    conns = await asyncio.wait_for(asyncio.gather(*(one(host, int(port), gate) for _ in range(n))), DEADLINE)
    print(f"held {len(conns)}", flush=True)
    await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), DEADLINE)
    alive = sum(await asyncio.gather(*(still_open(reader) for reader, _ in conns)))
    print(f"still open {alive}", flush=True)
    for _, writer in conns:
        writer.close()


asyncio.run(main())
