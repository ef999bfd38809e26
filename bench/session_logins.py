#!/usr/bin/env python3
"""Logs in N sessions on a running herd (loopback only), for bench/session_bytes.sh.

Session i belongs to user `u{i % USERS}` (password `pw`); each login is a `POST /login` without
a cookie, so each creates a new session. THREADS keep-alive connections share the work. Fails
unless every login answered 200 with a session cookie.

    bench/session_logins.py 127.0.0.1:3000 10000 100
"""

import http.client
import json
import sys
import threading

THREADS = 4


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    assert host.startswith("127."), "loopback only"
    n, users = int(sys.argv[2]), int(sys.argv[3])
    failures = []

    def work(first):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        for i in range(first, n, THREADS):
            body = json.dumps({"username": f"u{i % users}", "password": "pw"})
            conn.request("POST", "/login", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200 or not r.getheader("Set-Cookie"):
                failures.append((i, r.status))
                return

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    print(f"logged in {n}")


main()
