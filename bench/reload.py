#!/usr/bin/env python3
"""Rolling reloads under load, and how fast a dead worker is replaced.

    bench/reload.py            # needs wrk and redis-server; builds the release binary

1. wrk (2 threads, 16 keep-alive connections) against /healthz for 12 s with no reload: the
   steady state.
2. The same load for as long as 10 reloads take (`herd ctl reload`, one after another):
   failed requests (socket errors + non-2xx) and p99 latency, next to the steady state.
3. 10 times: SIGKILL a worker that has run for at least 5 s (younger ones are restarted with
   backoff, on purpose) and time until its replacement logs "ready", next to the time it takes
   to start the herd binary at all (`herd --version`, 20 runs).

Writes bench/results/reload.md and prints it. Everything runs on 127.0.0.1.
"""
import json, os, re, signal, socket, statistics, subprocess, sys, tempfile, threading, time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERD = os.path.join(ROOT, "target", "release", "herd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(map(int, errors.groups())) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "total": total, "p99_ms": p99_ms, "failed": socket_errors + (int(non2xx.group(1)) if non2xx else 0)}


def main():
    subprocess.run(["cargo", "build", "--release", "-p", "herd", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp()
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
                             stdout=subprocess.DEVNULL)
    wait_for("redis", lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).returncode == 0)
    port, sock = free_port(), os.path.join(tmp, "herd.sock")
    log_path = os.path.join(tmp, "herd.log")
    herd = subprocess.Popen([HERD, "serve", "--workers", "2", "--bind", f"127.0.0.1:{port}", "--redis-url",
                             f"redis://127.0.0.1:{redis_port}", "--control-socket", sock, "--log-format", "json",
                             "--log-file", log_path], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "info"})
    try:
        def log():
            entries = []
            try:
                for line in open(log_path):
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line still being written
            except FileNotFoundError:
                pass
            return entries

        wait_for("workers", lambda: any("workers ready" in e["fields"].get("message", "") for e in log()))
        url = f"http://127.0.0.1:{port}/healthz"
        ctl = lambda *a: subprocess.run([HERD, "ctl", "--socket", sock, *a], capture_output=True, text=True)

        steady = wrk(url, 12)

        reloads, reload_times = 10, []
        result = {}
        load = threading.Thread(target=lambda: result.update(wrk(url, 4 + reloads * 2)))
        load.start()
        time.sleep(2)  # load is flowing before the first reload
        for _ in range(reloads):
            started = time.time()
            done = ctl("reload")
            if done.returncode != 0:
                sys.exit(f"reload failed: {done.stderr}")
            reload_times.append(time.time() - started)
        load.join()

        respawn = []
        for _ in range(10):
            # A worker that dies within 5 s of starting is restarted with backoff on purpose;
            # measure the restart of a healthy worker: one that has run at least 5 s.
            def healthy():
                status = json.loads(ctl("status", "--json").stdout)["status"]
                return next((w for w in status["workers"] if w["state"] == "ready" and w["uptime_s"] >= 5), None)
            victim = wait_for("a worker up for 5 s", healthy)
            killed_at = time.time()
            os.kill(victim["pid"], signal.SIGKILL)

            def replaced():
                for e in log():
                    m = e["fields"].get("message", "")
                    if m.startswith(f"worker {victim['slot']} pid ") and m.endswith(" ready") and str(victim["pid"]) not in m:
                        ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                        if ts > killed_at:
                            return ts
            respawn.append(wait_for("the replacement", replaced) - killed_at)

        spawn = []
        for _ in range(20):
            t = time.time()
            subprocess.run([HERD, "--version"], stdout=subprocess.DEVNULL, check=True)
            spawn.append(time.time() - t)
    finally:
        herd.send_signal(signal.SIGTERM)
        herd.wait(timeout=60)
        redis.terminate()

    ms = lambda s: f"{s * 1000:.1f} ms"
    table = [
        f"2 workers, round-robin, wrk -t2 -c16 --latency against /healthz, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.",
        "",
        "| | requests | failed | req/s | p99 |",
        "|---|---:|---:|---:|---:|",
        f"| steady state (12 s) | {steady['total']:,} | {steady['failed']} | {steady['rps']:,.0f} | {steady['p99_ms']:.2f} ms |",
        f"| during {reloads} rolling reloads | {result['total']:,} | {result['failed']} | {result['rps']:,.0f} | {result['p99_ms']:.2f} ms |",
        "",
        f"Each reload (2 slots, one at a time) took {ms(statistics.median(reload_times))} median, {ms(max(reload_times))} max.",
        "",
        "| | median | max |",
        "|---|---:|---:|",
        f"| SIGKILL of a worker → its replacement ready | {ms(statistics.median(respawn))} | {ms(max(respawn))} |",
        f"| starting the binary at all (`herd --version`) | {ms(statistics.median(spawn))} | {ms(max(spawn))} |",
    ]
    text = "\n".join(table) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    open(os.path.join(ROOT, "bench", "results", "reload.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
