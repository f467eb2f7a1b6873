"""Two `versifier serve` replicas behind vllm-router, on loopback; one replica
is killed under load, and every request the router accepted must be answered.

    python3 -m venv /tmp/router && /tmp/router/bin/pip install vllm-router
    python3 packaging/serve/router_failover.py \
        --versifier target/release/versifier --router /tmp/router/bin/vllm-router \
        > packaging/serve/results/router-failover.json

For each way a replica can go (SIGKILL: the process vanishes mid-request;
SIGTERM: it drains), a fresh pair of replicas and a router start; clients send
`--requests` chat completions at `--rate` per second through the router;
from a third of the way in, replica B is stopped the first time it holds
requests. The JSON says how many were answered 200 and what the others got. The router (not this script) retries a
request whose replica went away.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def wait_http(url, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    return False


def in_flight(port):
    """Requests accepted and not answered by the replica on `port` (its /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("versifier_queue_depth{", "versifier_running{")):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def post(url, body, timeout=120):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.time()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer = json.loads(r.read())
            return r.status, answer, time.time() - started
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300], time.time() - started
    except Exception as e:  # a broken connection is a lost request
        return None, repr(e)[:300], time.time() - started


def scenario(args, how, base_port):
    a, b, router_port = base_port, base_port + 1, base_port + 10
    replicas = {}
    for port in (a, b):
        replicas[port] = subprocess.Popen(
            [args.versifier, "serve", "--bind", f"127.0.0.1:{port}", "--devices", "cpu",
             "--drain-timeout", "30s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    for port in (a, b):
        if not wait_http(f"http://127.0.0.1:{port}/ready", 60):
            sys.exit(f"replica on {port} did not become ready")
    router = subprocess.Popen(
        [args.router, "--host", "127.0.0.1", "--port", str(router_port),
         "--worker-urls", f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}",
         "--policy", "round_robin", "--health-check-endpoint", "/ready",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    if not wait_http(f"http://127.0.0.1:{router_port}/v1/models", 60):
        router.kill()
        sys.exit("the router did not start: " + router.stderr.read().decode(errors="replace")[-2000:])

    results = [None] * args.requests
    threads = []
    began = time.time()
    stop_at = args.requests // 3
    stopped_at = None
    in_flight_on_b = None
    for i in range(args.requests):
        due = began + i / args.rate
        time.sleep(max(0.0, due - time.time()))
        # From a third of the way in, B is stopped the first time it holds
        # requests (so some die with it, or drain).
        if i >= stop_at and stopped_at is None:
            n = in_flight(b)
            if n:
                in_flight_on_b = n
                replicas[b].send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
                stopped_at = time.time() - began
        # Eight 七律 each: about a second of a CPU engine, so some are
        # always in flight on the replica that is stopped.
        body = {"messages": [{"role": "user", "content": "秋夜 思鄉"}], "seed": i,
                "n": 8, "form": "qilv"}

        def run(i=i, body=body):
            results[i] = post(f"http://127.0.0.1:{router_port}/v1/chat/completions", body)

        t = threading.Thread(target=run, name=f"client-{i}")
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    router.send_signal(signal.SIGTERM)
    for p in replicas.values():
        p.send_signal(signal.SIGTERM)
    for p in list(replicas.values()) + [router]:
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
    replica_b_exit = replicas[b].returncode

    ok = [r for r in results if r[0] == 200 and r[1]["choices"][0]["message"]["content"]]
    others = [r for r in results if r not in ok]
    latencies = sorted(r[2] for r in ok)
    return {
        "replica_b_stopped_with": how,
        "replica_b_stopped_at_s": round(stopped_at or 0, 2),
        "replica_b_exit_code": replica_b_exit,
        "in_flight_on_b_when_stopped": in_flight_on_b,
        "sent": len(results),
        "answered_200": len(ok),
        "not_answered": len(others),
        "not_answered_detail": [{"status": r[0], "body": r[1]} for r in others[:10]],
        "p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "max_s": round(latencies[-1], 3) if latencies else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--versifier", default="target/release/versifier")
    ap.add_argument("--router", default="vllm-router")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--rate", type=float, default=4.0)
    args = ap.parse_args()
    version = subprocess.run(
        [sys.executable, "-m", "pip", "show", "vllm-router"], capture_output=True, text=True
    ).stdout
    report = {
        "router": "vllm-router " + next(
            (l.split(":", 1)[1].strip() for l in version.splitlines() if l.startswith("Version:")),
            "(version unknown: not installed in this Python)",
        ),
        "machine": f"{os.cpu_count()} logical CPUs",
        "settings": "two replicas (one CPU engine each, bundled model, serve defaults), "
                    "round_robin, health check /ready, loopback; chat completions of eight 七律 each",
        "scenarios": [scenario(args, how, port) for how, port in (("SIGKILL", 18301), ("SIGTERM", 18401))],
    }
    print(json.dumps(report, ensure_ascii=False, indent=2))
    lost = sum(s["not_answered"] for s in report["scenarios"])
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
