"""The control path at 1,000 servers: what scraping every server's `/metrics` each second
costs the router, whether every server's refresh is kept, its memory per server, and what
choosing among 1,000 servers adds to a request.

    bash bench/control_path.sh                 # 1,000 servers, 30 s of scraping
    bash bench/control_path.sh --quick         # the CI smoke test: 50 servers, 3 s

The servers are one nginx worker (on CPU 1) listening on N ports, each answering like a vLLM
server: `/metrics` (a real vLLM capture, 20 KB), `/v1/models`, `/health`, and a fixed chat
completion. The router (on CPU 0, its defaults: `/metrics` every second) is given all N; once
it sees them all healthy, its CPU time over a window gives the scraping's share of a core, and
its own `mvllm_scrape_duration_seconds` counters give each server's scrapes in that window (the
refresh kept: about one per second each) and how long a scrape took. Its memory is compared
with a router given one server. Then short requests through both routers (wrk, 16
connections): the CPU per request with 1,000 servers to choose from against one. The
selection alone is measured by `cargo bench --bench policy_pick`. Writes
bench/results/control-path/{results.json, report.md}.
"""

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import (MVLLM, ROOT, Procs, cpu_seconds, free_port, get, memory_mib, out_dir,
                      perf_report, start_perf, wait_for, wrk)
from proxy_overhead import METRICS_FIXTURE, MODEL, chat_response, nginx_string, request_body

SCRAPE_COUNT = re.compile(
    r'^mvllm_scrape_duration_seconds_(count|sum)\{(?=[^}]*endpoint="metrics")[^}]*'
    r'server="([^"]+)"[^}]*\} (\S+)$')


def start_servers(procs, tmp, n):
    """N vLLM-like servers in one nginx worker; their URLs."""
    d = tmp / "servers"
    (d / "logs").mkdir(parents=True)
    ports = sorted({free_port() for _ in range(n * 2)})[:n]
    models = json.dumps({"object": "list", "data": [
        {"id": MODEL, "object": "model", "owned_by": "vllm", "root": MODEL,
         "max_model_len": 4096}]})
    listens = "\n".join(f"listen 127.0.0.1:{p};" for p in ports)
    (d / "nginx.conf").write_text(f"""worker_processes 1; user root; pid {d}/nginx.pid;
worker_rlimit_nofile 65536;
error_log {d}/logs/error.log warn; events {{ worker_connections 32768; }}
http {{ access_log off; keepalive_requests 1000000;
server {{ {listens}
  location = /v1/models {{ default_type application/json; return 200 {nginx_string(models)}; }}
  location = /health {{ return 200; }}
  location = /metrics {{ default_type text/plain; alias {METRICS_FIXTURE}; }}
  location / {{ default_type application/json; return 200 {nginx_string(chat_response())}; }}
}} }}""")
    procs.start(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                open(tmp / "servers.log", "w"), cpus="1")
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    wait_for("the servers", lambda: get(urls[-1] + "/health")[0] == 200)
    return urls


def start_router(procs, tmp, name, urls, limit):
    port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text("[servers]\nservers = [\n" + "".join(
        f'  {{ url = "{u}", max_concurrent_requests = 64 }},\n' for u in urls) + "]\n")
    p = procs.start([str(MVLLM), "run", "--console", "--no-access-log", "--config", str(config),
                     "--host", "127.0.0.1", "--port", str(port)],
                    open(tmp / f"{name}.log", "w"), cpus="0")
    url = f"http://127.0.0.1:{port}"

    def ready():
        status, body = get(url + "/health", timeout=5)
        return status == 200 and json.loads(body).get("healthy_servers") == len(urls)
    wait_for(f"a router seeing {len(urls)} healthy servers", ready, limit=limit)
    return url, p.pid


def scrape_counts(router):
    """Per server: (scrapes of /metrics so far, seconds they took in all)."""
    _, text = get(router + "/metrics", timeout=30)
    counts = {}
    for line in text.splitlines():
        m = SCRAPE_COUNT.match(line)
        if m:
            kind, server, value = m.groups()
            entry = counts.setdefault(server, [0.0, 0.0])
            entry[0 if kind == "count" else 1] = float(value)
    return counts


def percentile(values, q):
    values = sorted(values)
    return values[round((len(values) - 1) * q)] if values else float("nan")


def run(args, tmp):
    procs = Procs()
    try:
        urls = start_servers(procs, tmp, args.servers)
        many, many_pid = start_router(procs, tmp, "many", urls, limit=120)
        one, one_pid = start_router(procs, tmp, "one", urls[:1], limit=30)
        time.sleep(2)  # past the start-up's first round of checks
        before, cpu0, t0 = scrape_counts(many), cpu_seconds(many_pid), time.monotonic()
        time.sleep(args.window)
        after, cpu1, t1 = scrape_counts(many), cpu_seconds(many_pid), time.monotonic()
        elapsed = t1 - t0
        rates, took = [], []
        for server, (count, total) in after.items():
            c0, s0 = before.get(server, (0.0, 0.0))
            rates.append((count - c0) / elapsed)
            if count > c0:
                took.append((total - s0) / (count - c0))
        result = {
            "servers": args.servers, "window_s": elapsed,
            "scraping_cpu_share_of_a_core": (cpu1 - cpu0) / elapsed,
            "scrapes_per_server_per_s": {"min": min(rates, default=0.0),
                                         "median": percentile(rates, 0.5)},
            "servers_scraped": len(rates),
            "scrape_seconds": {"mean": sum(took) / len(took) if took else None,
                               "p99": percentile(took, 0.99)},
            "rss_mib": {"many": memory_mib(many_pid), "one": memory_mib(one_pid)},
        }
        result["kib_per_server"] = ((result["rss_mib"]["many"] - result["rss_mib"]["one"])
                                    * 1024 / (args.servers - 1))
        for name, url, pid in (("one", one, one_pid), ("many", many, many_pid)):
            c0 = cpu_seconds(pid)
            perf = args.perf and start_perf(pid, args.wrk_seconds,
                                            args.perf_out / f"perf-{name}.data")
            r = wrk(url + "/v1/chat/completions", request_body("chat"), 16, args.wrk_seconds,
                    cpus="1")
            if perf:
                perf.wait()
                perf_report(args.perf_out / f"perf-{name}.data",
                            args.perf_out / f"perf-{name}.txt")
            result[f"requests_{name}"] = {
                "rps": r["requests"] / r["duration_s"], "errors": r["errors"],
                "p50_ms": r["p50_s"] * 1e3, "p99_ms": r["p99_s"] * 1e3,
                # includes the scraping that goes on meanwhile
                "cpu_us_per_request": (cpu_seconds(pid) - c0) / max(1, r["requests"]) * 1e6}
        return result
    finally:
        procs.stop()


def policy_pick():
    """`cargo bench --bench policy_pick`'s lines (the selection alone, 1,000 servers)."""
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "policy_pick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    return criterion_times(out.stdout.splitlines())


def criterion_times(lines):
    """Criterion's output cut to one line per benchmark: its name and its time's interval."""
    times, name = [], None
    for line in lines:
        if line and not line[0].isspace() and not line.startswith(("Found", "Benchmarking")):
            name, _, rest = line.partition(" time:")
            name = name.strip()
            if rest:
                times.append(f"{name:<36} time:{rest}")
        elif line.strip().startswith("time:") and name:
            times.append(f"{name:<36} {line.strip()}")
    return times


def report_md(res):
    r = res["control"]
    s, one, many = r["scrapes_per_server_per_s"], r["requests_one"], r["requests_many"]
    lines = [f"{r['servers']:,} servers, `/metrics` every second, {r['window_s']:.0f} s window.\n",
             "| measurement | result |", "| --- | --- |",
             f"| router CPU while scraping (no traffic) | {r['scraping_cpu_share_of_a_core'] * 100:.1f} % of a core |",
             f"| scrapes per server per second (min / median) | {s['min']:.2f} / {s['median']:.2f} over {r['servers_scraped']:,} servers |",
             f"| one scrape's wall time (mean / p99 over servers' means) | {fmt_ms(r['scrape_seconds']['mean'])} / {fmt_ms(r['scrape_seconds']['p99'])} |",
             f"| router memory, {r['servers']:,} servers / 1 server | {r['rss_mib']['many']:.1f} / {r['rss_mib']['one']:.1f} MiB ({r['kib_per_server']:.1f} KiB per server) |",
             f"| short requests, 16 connections, 1 server | {one['rps']:,.0f} req/s, {one['cpu_us_per_request']:.1f} µs CPU per request |",
             f"| the same with {r['servers']:,} servers to choose from | {many['rps']:,.0f} req/s, {many['cpu_us_per_request']:.1f} µs CPU per request (scraping included) |"]
    if res.get("policy_pick"):
        lines += ["", "`cargo bench --bench policy_pick` (the choice alone):", "", "```"]
        lines += criterion_times(res["policy_pick"]) + ["```"]
    return "\n".join(lines) + "\n"


def fmt_ms(seconds):
    return "–" if seconds is None else f"{seconds * 1e3:.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30, help="seconds of scraping measured")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50 servers, 3 s, no policy_pick")
    parser.add_argument("--perf", action="store_true",
                        help="record each router with perf while wrk runs: perf-one.data and "
                             "perf-many.data, their flat profiles in perf-one.txt, perf-many.txt")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "control-path"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.window, args.wrk_seconds = 50, 3, 1
    out = out_dir(args)
    args.perf_out = out
    if args.report_only:
        res = json.loads((out / "results.json").read_text())
    else:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="mvllm-control-"))
        try:
            control = run(args, tmp)
            res = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "args": {k: v for k, v in vars(args).items() if k != "perf_out"},
                   "control": control}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not args.quick:
            res["policy_pick"] = policy_pick()
        (out / "results.json").write_text(json.dumps(res, indent=1))
    text = report_md(res)
    (out / "report.md").write_text(text)
    print(text)
    c = res["control"]
    if args.quick and (c["servers_scraped"] < c["servers"] or c["requests_many"]["errors"]):
        sys.exit("not every server was scraped, or requests failed")


if __name__ == "__main__":
    main()
