#!/usr/bin/env python3
"""An idle attacker: how many connections can it keep open on herd, and for how long?

Opens N connections of each kind against a running herd (loopback only) and reports, at each
checkpoint, how many the server still holds open:

  silent      connect and send nothing
  half-head   send half a request line
  keep-alive  one complete request, then sit on the idle connection

    bench/idle_attacker.py 127.0.0.1:3000 --each 100 --checkpoints 5,30,80

Used for the figures in docs/hardening.md ("Connections and timeouts").
"""

import argparse
import select
import socket
import time


def still_open(sock):
    """True while the server has neither closed nor reset the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        while True:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("addr", help="host:port of herd (loopback)")
    parser.add_argument("--each", type=int, default=100, help="connections of each kind")
    parser.add_argument("--checkpoints", default="5,30,80", help="seconds after the start")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    assert host.startswith("127.") or host == "localhost", "loopback only"
    kinds = {"silent": b"", "half-head": b"GET /hea", "keep-alive": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"}
    conns = {kind: [] for kind in kinds}
    start = time.monotonic()
    for kind, payload in kinds.items():
        for _ in range(args.each):
            sock = socket.create_connection((host, int(port)))
            if payload:
                sock.sendall(payload)
            conns[kind].append(sock)
    print(f"opened {args.each} of each kind in {time.monotonic() - start:.1f}s")
    for checkpoint in (float(c) for c in args.checkpoints.split(",")):
        time.sleep(max(0.0, start + checkpoint - time.monotonic()))
        held = {kind: sum(still_open(s) for s in socks) for kind, socks in conns.items()}
        print(f"after {checkpoint:>4.0f}s: " + ", ".join(f"{kind} {n}/{args.each} open" for kind, n in held.items()))


if __name__ == "__main__":
    main()
