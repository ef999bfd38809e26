#!/usr/bin/env python3
"""How the workers of several hosts come back to a Redis that returns.

    bench/reconnect_storm.py [HERD_BINARY]      # default target/debug/herd (timing is not CPU-bound)

Three herd hosts (127.0.0.2, 127.0.0.3, 127.0.0.4, HOST_WORKERS=4 workers each) share one
redis-server. Redis is killed, stays down DOWN_S=5 seconds (every worker keeps retrying), and
is started again on the same port. From that moment Redis's `total_connections_received` is
sampled every 10 ms for 2 s: the connections the workers open to get back (each worker holds
`--redis-pool-size` connections plus one for the cache's invalidation channel). Reported: how
many arrived, over how long, the busiest 100 ms and the busiest second.

Writes bench/results/reconnect_storm.md and prints it. Everything runs on loopback.
"""
import os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERD = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "herd")
HOST_WORKERS = int(os.environ.get("HOST_WORKERS", "4"))
DOWN_S = float(os.environ.get("DOWN_S", "5"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


class Sampler:
    """One connection of its own, kept open, so sampling adds no connection to the count."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))

    def connections_received(self):
        self.sock.sendall(b"INFO stats\r\n")
        data = b""
        while True:
            data += self.sock.recv(65536)
            head, _, rest = data.partition(b"\r\n")
            if head.startswith(b"$") and len(rest) >= int(head[1:]):
                break
        for line in rest.decode().splitlines():
            if line.startswith("total_connections_received:"):
                return int(line.split(":")[1])
        raise RuntimeError("no total_connections_received in INFO")


def start_redis(port, tmp):
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
                            stdout=subprocess.DEVNULL)
    wait_for("redis", lambda: cli(port, "PING") is not None)
    return proc


def healthy(host, port):
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main():
    tmp = tempfile.mkdtemp()
    redis_port = free_port()
    redis = start_redis(redis_port, tmp)
    hosts = []
    for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]:
        port = free_port()
        env = dict(os.environ, XDG_RUNTIME_DIR=tempfile.mkdtemp(), RUST_LOG="warn")
        proc = subprocess.Popen([HERD, "serve", "--workers", str(HOST_WORKERS), "--bind", f"{host}:{port}",
                                 "--redis-url", f"redis://127.0.0.1:{redis_port}", "--secure-cookies", "false"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hosts.append((host, port, proc))
    try:
        for host, port, _ in hosts:
            wait_for(f"{host} ready", lambda: healthy(host, port))
        redis.kill()
        redis.wait()
        time.sleep(DOWN_S)
        redis = start_redis(redis_port, tmp)
        start = time.time()
        sampler = Sampler(redis_port)
        base = sampler.connections_received()
        samples = []
        while time.time() - start < 2.0:
            samples.append((time.time() - start, sampler.connections_received() - base))
            time.sleep(0.01)
        for host, port, _ in hosts:
            wait_for(f"{host} ready again", lambda: healthy(host, port))
    finally:
        for _, _, proc in hosts:
            proc.terminate()
        for _, _, proc in hosts:
            proc.wait()
        redis.kill()

    total = samples[-1][1]
    arrived = [t for t, n in samples if n > 0]
    first = arrived[0] if arrived else 0.0
    last = next((t for t, n in samples if n == total), 0.0)

    def busiest(window):
        return max(n2 - n1 for (t1, n1) in samples for (t2, n2) in samples if 0 <= t2 - t1 <= window)

    lines = [
        "| hosts × workers | connections back | first at | all back by | busiest 100 ms | busiest second |",
        "|---|---:|---:|---:|---:|---:|",
        f"| 3 × {HOST_WORKERS} | {total} | {first * 1000:.0f} ms | {last * 1000:.0f} ms | "
        f"{busiest(0.1)} | {busiest(1.0)} |",
        "",
        f"(Redis down {DOWN_S:.0f} s, then its total_connections_received sampled every 10 ms for 2 s over one "
        "kept-open connection; times from the restart)",
    ]
    text = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "reconnect_storm.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
