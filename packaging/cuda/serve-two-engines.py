#!/usr/bin/env python3
"""Two engines on one GPU under `versifier serve`, each ending at 0 MiB.

    serve-two-engines.py BINARY OUT.json [--devices cuda:0,cuda:0] [--idle 6]

Starts the server on a free loopback port, then:
1. a burst of concurrent requests, so both engines load;
2. one request at a time for a while: they all go to the first engine (the
   router takes the first of the least loaded), so the second idles out and
   releases *while the first still generates* on the same GPU. Every one of
   these must succeed: a release that reset the shared CUDA context would
   break the first engine here;
3. no requests until both engines have released; then this process's GPU
   memory must be 0 by NVML (the server's /v1/status) and by `nvidia-smi`
   from outside (the server's pid listed with 0 MiB or not at all).

Writes one JSON with every observation and `passed`. With `--devices cpu,cpu`
(a dry run on a machine without a GPU) the memory checks are skipped.
"""
import argparse
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except Exception as e:  # connection refused, timeout
        return None, {"error": str(e)}


def smi_process_mib(pid):
    """MiB nvidia-smi lists for `pid` (0 when not listed); None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            total += int(parts[1]) if parts[1].isdigit() else 0
    return total


def engine_view(status):
    return [{"state": e.get("state", {}).get("state"), "served": e.get("served"),
             "release": e.get("last_release")} for e in status.get("engines", [])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("out")
    ap.add_argument("--devices", default="cuda:0,cuda:0")
    ap.add_argument("--idle", type=int, default=6)
    ap.add_argument("--burst", type=int, default=16)
    a = ap.parse_args()
    gpu = not a.devices.startswith("cpu")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([a.binary, "--log-dir", "none", "serve", "--bind", f"127.0.0.1:{port}",
                               "--devices", a.devices, "--idle", f"{a.idle}s", "--max-queue", "64"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    report = {"devices": a.devices, "idle_s": a.idle, "pid": server.pid, "timeline": []}
    started = time.time()

    def note(what, **kw):
        kw.update(t=round(time.time() - started, 2), what=what)
        report["timeline"].append(kw)

    try:
        for _ in range(100):
            if call(base, "/v1/status", timeout=2)[0] == 200:
                break
            time.sleep(0.1)
        poem = {"prompt": "月", "form": "wujue", "max_tokens": 64}
        results = [None] * a.burst

        def one(i):
            results[i] = call(base, "/v1/poems", dict(poem, seed=i))[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(a.burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = call(base, "/v1/status")[1]
        note("burst answered", statuses=results, engines=engine_view(st), smi_mib=smi_process_mib(server.pid))
        report["burst_ok"] = all(s == 200 for s in results)
        report["both_engines_served"] = sum(1 for e in st.get("engines", []) if (e.get("served") or 0) > 0) >= 2

        # One at a time until the other engine has released, and a few after.
        sequential, after_release = [], 0
        deadline = time.time() + 4 * a.idle + 20
        while time.time() < deadline and after_release < 4:
            code = call(base, "/v1/poems", dict(poem, seed=1000 + len(sequential)))[0]
            sequential.append(code)
            st = call(base, "/v1/status")[1]
            states = [e["state"] for e in engine_view(st)]
            if "unloaded" in states:
                if after_release == 0:
                    note("one engine released while the other serves", engines=engine_view(st),
                         smi_mib=smi_process_mib(server.pid))
                after_release += 1
            time.sleep(0.5)
        report["sequential_statuses"] = sequential
        report["served_through_the_other_release"] = after_release >= 4 and all(s == 200 for s in sequential)

        # Quiet until both have released.
        deadline = time.time() + 2 * a.idle + 20
        while time.time() < deadline:
            st = call(base, "/v1/status")[1]
            if all(e["state"] == "unloaded" for e in engine_view(st)):
                break
            time.sleep(0.5)
        time.sleep(0.5)
        st = call(base, "/v1/status")[1]
        smi = smi_process_mib(server.pid)
        note("both released", engines=engine_view(st), gpus=st.get("gpus"), smi_mib=smi)
        report["final_status"] = st
        report["both_released"] = all(e["state"] == "unloaded" for e in engine_view(st))
        if gpu:
            nvml = [r["release"].get("gpu_after_bytes") for r in engine_view(st) if r.get("release")]
            report["nvml_after_last_release_bytes"] = st.get("gpus")
            report["nvidia_smi_after_mib"] = smi
            report["zero_by_nvidia_smi"] = smi == 0
            # The engine that released last saw the context go: 0 bytes by NVML.
            report["zero_by_nvml"] = any(b == 0 for b in nvml)
        ok = ["burst_ok", "both_engines_served", "served_through_the_other_release", "both_released"]
        if gpu:
            ok += ["zero_by_nvidia_smi", "zero_by_nvml"]
        report["passed"] = all(report.get(k) for k in ok)
    finally:
        server.terminate()
        try:
            out, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
        report["server_output_tail"] = out[-3000:]
    json.dump(report, open(a.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in report.items() if k not in ("timeline", "final_status", "server_output_tail")}))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
