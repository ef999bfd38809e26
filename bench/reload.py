#!/usr/bin/env python3
"""Rolling reloads and primary hand-overs under load, and how fast a dead worker is replaced.

    bench/reload.py            # needs wrk and redis-server; builds the release binary

1. wrk (2 threads, 16 keep-alive connections) against /healthz for 12 s with no reload: the
   steady state.
2. The same load for as long as 10 reloads take (`herd ctl reload`, one after another):
   failed requests (socket errors + non-2xx) and p99 latency, next to the steady state.
3. The same for 10 primary hand-overs (`herd ctl upgrade`, each waited for until the old
   primary has exited), under keep-alive load and under a new connection per request, each next
   to a steady run of the same kind; and each hand-over's time from the request to the old
   primary's exit.
4. 10 times: SIGKILL a worker that has run for at least 5 s (younger ones are restarted with
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


def wrk(url, seconds, *extra):
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", *extra, url], capture_output=True, text=True).stdout
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
    # After a hand-over the primary serving is no longer our child.
    primary = {"pid": herd.pid}

    def exited(pid):
        if pid == herd.pid:
            return herd.poll() is not None
        try:  # not our child: gone once init has reaped it
            return open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
        except FileNotFoundError:
            return True

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

        def under_load(seconds, action, times, *extra):
            """wrk for `seconds` while `action` runs `times` times, one after another, once the
            load flows; → (wrk's result, each action's duration). wrk runs long enough to
            outlast the actions, so the figures include some steady load on both sides."""
            result, durations = {}, []
            load = threading.Thread(target=lambda: result.update(wrk(url, seconds, *extra)))
            load.start()
            time.sleep(2)  # load is flowing before the first action
            for _ in range(times):
                started = time.time()
                action()
                durations.append(time.time() - started)
            load.join()
            return result, durations

        def reload():
            done = ctl("reload")
            if done.returncode != 0:
                sys.exit(f"reload failed: {done.stderr}")

        reloads = 10
        result, reload_times = under_load(4 + reloads * 2, reload, reloads)

        def upgrade():
            old = primary["pid"]
            done = ctl("upgrade")
            if done.returncode != 0:
                sys.exit(f"upgrade failed: {done.stderr}")
            primary["pid"] = int(re.search(r"pid (\d+)", done.stdout).group(1))
            wait_for("the old primary to exit", lambda: exited(old))

        # Hand-overs against steady load of the same kind, in alternating rounds: this machine
        # is shared, and a noisy stretch should hit both columns alike.
        rounds, per_round, close = int(os.environ.get("ROUNDS", "5")), 3, ("-H", "Connection: close")
        handover = {kind: {"steady": [], "during": []} for kind in ("keep-alive", "close")}
        upgrade_times = []
        for _ in range(rounds):
            for kind, extra in (("keep-alive", ()), ("close", close)):
                handover[kind]["steady"].append(wrk(url, 3 + per_round, *extra))
                during, times = under_load(3 + per_round, upgrade, per_round, *extra)
                handover[kind]["during"].append(during)
                upgrade_times += times

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
                    f = e["fields"]
                    if (f.get("message") == "worker reported ready" and f.get("slot") == victim["slot"]
                            and f.get("worker_pid") != victim["pid"]):
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
        os.kill(primary["pid"], signal.SIGTERM)
        wait_for("herd to stop", lambda: exited(primary["pid"]), 60)
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
        f"Primary hand-overs: {rounds} rounds, each a steady wrk run and a run of the same length during which",
        f"{per_round} hand-overs (`herd ctl upgrade`, waited for until the old primary exited) follow one another;",
        f"each hand-over took {ms(statistics.median(upgrade_times))} median, {ms(max(upgrade_times))} max.",
        "",
        "| load | | requests | failed | req/s, median | p99, median | p99 round by round |",
        "|---|---|---:|---:|---:|---:|---|",
        *(f"| {'keep-alive' if kind == 'keep-alive' else 'a new connection per request'} | {column} "
          f"| {sum(r['total'] for r in runs):,} | {sum(r['failed'] for r in runs)} "
          f"| {statistics.median(r['rps'] for r in runs):,.0f} | {statistics.median(r['p99_ms'] for r in runs):.2f} ms "
          f"| {' '.join(format(r['p99_ms'], '.1f') for r in runs)} |"
          for kind, columns in handover.items() for column, runs in columns.items()),
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
