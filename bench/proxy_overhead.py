"""Proxy overhead: what each router costs per request in front of a backend as fast as
possible, side by side with nginx as a plain reverse proxy, in one run on one machine.

    bash bench/proxy_overhead.sh                 # everything (installs what it needs)
    bash bench/proxy_overhead.sh --quick         # the CI smoke test: seconds, every proxy
    bash bench/proxy_overhead.sh --report-only   # tables and chart again from the JSON

The backend is nginx returning a fixed vLLM-shaped body: a chat completion (`chat`) or a
streamed one (`sse`: 12 `data:` events and `[DONE]`), and `/v1/models`, `/health` and a vLLM
`/metrics` capture for the routers that look. Each proxy in turn — none (`direct`), nginx (a
plain keep-alive reverse proxy: 1 worker, no buffering, no access log), mvllm (its default
policy, access log off), vllm-router and sglang-router (round_robin, their cheapest policy)
and the Python mvllm 0.1.0 — runs pinned to CPU 0; the backend and the load generator share
CPU 1. For each kind and number of connections, the proxies are measured in turn (A B C A B
C ...: interleaved repetitions) with wrk; the proxy's CPU time (user + system, all its
processes, from /proc) is divided by the requests wrk completed. Then each proxy at a fixed
rate (oha, 1,000 req/s with latency correction) for the added latency. Writes
bench/results/proxy-overhead/{results.json, report.md, chart.png}.
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

from benchlib import (MVLLM, ROOT, Procs, cpu_seconds, free_port, get, median_range,
                      memory_mib, oha, wait_for, wrk, out_dir)

MODEL = "bench-model"
PROXY_CPU, LOAD_CPU = "0", "1"
PROXIES = ["direct", "nginx", "mvllm", "vllm-router", "sglang-router", "mvllm-py"]
KINDS = ["chat", "sse"]
CONNECTIONS = [1, 16, 64, 256]
METRICS_FIXTURE = ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.33-like_text-0.0.4_singleproc.txt"


def request_body(kind):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 12}
    if kind == "sse":
        body["stream"] = True
    return json.dumps(body)


def chat_response():
    return json.dumps({
        "id": "chatcmpl-7a1edf5589fb4cb1abec14b76bbfcf8d", "object": "chat.completion",
        "created": 1749230195, "model": MODEL,
        "choices": [{"index": 0, "message": {
            "role": "assistant", "reasoning_content": None,
            "content": "Okay, let's break down what Deep Learning is. It's a fascinating",
            "tool_calls": []}, "logprobs": None, "finish_reason": "length",
            "stop_reason": None}],
        "usage": {"prompt_tokens": 14, "total_tokens": 26, "completion_tokens": 12,
                  "prompt_tokens_details": None},
        "prompt_logprobs": None, "kv_transfer_params": None}, separators=(",", ":"))


def sse_response():
    words = ["Hi", "!", " How", " can", " I", " help", " you", " today", "?", " I", "'m", " here"]
    chunk = {"id": "chatcmpl-8b2b91720edd4372b0579e89255b4828",
             "object": "chat.completion.chunk", "created": 1772423572, "model": MODEL}
    events = []
    for i, word in enumerate(words):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        last = i == len(words) - 1
        events.append({**chunk, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": "length" if last else None}]})
    events.append({**chunk, "choices": [], "usage": {
        "prompt_tokens": 14, "total_tokens": 26, "completion_tokens": 12}})
    return "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events) + \
        "data: [DONE]\n\n"


def nginx_string(text):
    """`text` as an nginx single-quoted string (no `$` in our bodies: nginx would expand it)."""
    assert "$" not in text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def start_backend(procs, tmp):
    """nginx on CPU 1 with one port per kind; returns {kind: url}."""
    (tmp / "backend" / "logs").mkdir(parents=True, exist_ok=True)
    models = json.dumps({"object": "list", "data": [
        {"id": MODEL, "object": "model", "created": 1749230195, "owned_by": "vllm",
         "root": MODEL, "parent": None, "max_model_len": 4096}]})
    ports = {kind: free_port() for kind in KINDS}
    servers = []
    for kind, port in ports.items():
        body, ctype = ((chat_response(), "application/json") if kind == "chat"
                       else (sse_response(), "text/event-stream"))
        servers.append(f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/models {{ default_type application/json; return 200 {nginx_string(models)}; }}
    location = /health {{ return 200; }}
    location = /metrics {{ default_type text/plain; alias {METRICS_FIXTURE}; }}
    location / {{ default_type {ctype}; return 200 {nginx_string(body)}; }}
  }}""")
    conf = tmp / "backend" / "nginx.conf"
    conf.write_text(f"""worker_processes 1; user root; pid {tmp}/backend/nginx.pid;
error_log {tmp}/backend/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; {''.join(servers)} }}""")
    procs.start(["nginx", "-p", str(tmp / "backend"), "-c", str(conf), "-g", "daemon off;"],
                open(tmp / "backend.log", "w"), cpus=LOAD_CPU)
    urls = {kind: f"http://127.0.0.1:{port}" for kind, port in ports.items()}
    for url in urls.values():
        wait_for("the nginx backend", lambda: get(url + "/health")[0] == 200)
    return urls


# Other builds of mvllm measured beside this one (`--build NAME=PATH`): name -> binary.
BUILDS = {}


def start_proxy(procs, tmp, proxy, backend):
    """`proxy` in front of `backend`, pinned to CPU 0; returns (url, process group id)."""
    if proxy == "direct":
        return backend, None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / f"{proxy}-{port}.log", "w")
    if proxy == "nginx":
        d = tmp / f"nginx-{port}"
        (d / "logs").mkdir(parents=True)
        (d / "nginx.conf").write_text(f"""worker_processes 1; user root; pid {d}/nginx.pid;
error_log {d}/logs/error.log warn; events {{ worker_connections 8192; }}
http {{ access_log off; upstream backend {{ server {backend[len('http://'):]}; keepalive 512; }}
server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass http://backend;
proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
proxy_read_timeout 600s; }} }} }}""")
        p = procs.start(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g",
                         "daemon off;"], log, cpus=PROXY_CPU)
        ready = lambda: get(url + "/health")[0] == 200  # noqa: E731
    elif proxy in ("mvllm", "mvllm-py") or proxy in BUILDS:
        config = tmp / f"{proxy}-{port}.toml"
        config.write_text(f'[servers]\nservers = [{{ url = "{backend}", '
                          f'max_concurrent_requests = 100000 }}]\n')
        if proxy != "mvllm-py":
            args = [str(BUILDS.get(proxy, MVLLM)), "run", "--console", "--no-access-log",
                    "--config", str(config)]
        else:
            args = [str(pathlib.Path(sys.executable).parent / "mvllm"), "run", "--console",
                    "--log-level", "WARNING", "--config", str(config)]
        # cwd: the Python mvllm writes a logs/ folder where it runs.
        p = procs.start(args + ["--host", "127.0.0.1", "--port", str(port)], log,
                        cpus=PROXY_CPU, cwd=tmp)

        def ready():
            status, body = get(url + "/health")
            if proxy != "mvllm-py":
                return status == 200 and json.loads(body).get("healthy_servers") == 1
            return status == 200 and get(url + "/v1/models")[0] == 200
    else:
        exe = ([sys.executable, "-m", "sglang_router.launch_router"] if proxy == "sglang-router"
               else [str(pathlib.Path(sys.executable).parent / "vllm-router")])
        p = procs.start(exe + ["--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                               backend, "--policy", "round_robin", "--prometheus-port",
                               str(free_port()), "--log-level",
                               "warn" if proxy == "sglang-router" else "warning"],
                        log, cpus=PROXY_CPU)
        ready = lambda: get(url + "/v1/models")[0] == 200  # noqa: E731
    wait_for(proxy, ready)
    return url, p.pid


def measure(url, pgid, kind, connections, duration):
    """One wrk run through one proxy: throughput, latency, the proxy's CPU per request."""
    before = cpu_seconds(pgid) if pgid else 0.0
    report = wrk(url + "/v1/chat/completions", request_body(kind), connections, duration,
                 cpus=LOAD_CPU)
    used = (cpu_seconds(pgid) - before) if pgid else None
    ok = report["requests"] - report["errors"]
    return {"rps": report["requests"] / report["duration_s"], "requests": report["requests"],
            "errors": report["errors"], "p50_ms": report["p50_s"] * 1e3,
            "p99_ms": report["p99_s"] * 1e3,
            # Too few requests (the Python mvllm at 256 connections) say nothing per request.
            "cpu_us_per_request": used / ok * 1e6 if used is not None and ok >= 50 else None,
            "rss_mib": memory_mib(pgid) if pgid else None}


def run(args, tmp):
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
               "throughput": [], "fixed_rate": [], "memory": {}}
    procs = Procs()
    try:
        backends = start_backend(procs, tmp)
        started = time.monotonic()
        for kind in args.kinds:
            proxies = {p: start_proxy(procs, tmp, p, backends[kind]) for p in args.proxies}
            for proxy, (url, pgid) in proxies.items():  # warm-up: connections, pools, JIT
                measure(url, pgid, kind, 16, min(1.0, args.duration))
            for rep in range(args.reps):
                for connections in args.connections:
                    for proxy, (url, pgid) in proxies.items():
                        r = measure(url, pgid, kind, connections, args.duration)
                        r.update(kind=kind, connections=connections, proxy=proxy, rep=rep)
                        results["throughput"].append(r)
                        print(f"[{time.monotonic() - started:5.0f} s] {kind} c{connections} "
                              f"rep {rep + 1} {proxy:>13}: {r['rps']:8.0f} req/s  p50 "
                              f"{r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  CPU "
                              f"{fmt(r['cpu_us_per_request'], '{:.1f}')} us/req  errors "
                              f"{r['errors']}", flush=True)
            if args.rate:
                for rep in range(args.reps):
                    for proxy, (url, pgid) in proxies.items():
                        r = oha(url + "/v1/chat/completions", request_body(kind), args.rate,
                                16, args.rate_duration, cpus=LOAD_CPU)
                        r.update(kind=kind, proxy=proxy, rep=rep, rate=args.rate)
                        results["fixed_rate"].append(r)
                        print(f"[{time.monotonic() - started:5.0f} s] {kind} {args.rate}/s "
                              f"rep {rep + 1} {proxy:>13}: p50 {r['p50'] * 1e3:.3f} ms  p99 "
                              f"{r['p99'] * 1e3:.3f} ms  ok {r['ok']} errors {r['errors']}",
                              flush=True)
            for proxy, (url, pgid) in proxies.items():
                if pgid:
                    results["memory"].setdefault(proxy, {})[kind] = memory_mib(pgid, "VmHWM")
            stop_proxies(procs, {pgid for _, pgid in proxies.values() if pgid})
    finally:
        procs.stop()
    return results


def stop_proxies(procs, pgids):
    keep = [p for p in procs.procs if p.pid not in pgids]
    procs.procs = [p for p in procs.procs if p.pid in pgids]
    procs.stop()
    procs.procs = keep


def fmt(value, pattern):
    return "–" if value is None else pattern.format(value)


def cell(values, pattern):
    m = median_range(values)
    if m is None:
        return "–"
    if m[1] == m[2]:
        return pattern.format(m[0])
    return f"{pattern.format(m[0])} ({pattern.format(m[1])}–{pattern.format(m[2])})"


def all_proxies(runs):
    """The proxies measured, in PROXIES' order, other builds after this one."""
    seen = {r["proxy"] for r in runs}
    extra = sorted(seen - set(PROXIES))
    order = []
    for p in PROXIES:
        if p in seen:
            order.append(p)
        if p == "mvllm":
            order += extra
    return order


def tables(results):
    runs = results["throughput"]
    out = []
    kinds = sorted({r["kind"] for r in runs}, key=KINDS.index)
    conns = sorted({r["connections"] for r in runs})
    proxies = all_proxies(runs)

    def of(kind, c, p, key):
        return [r[key] for r in runs if (r["kind"], r["connections"], r["proxy"]) == (kind, c, p)]

    for kind in kinds:
        out.append(f"#### {kind}: " + ("non-stream chat completions" if kind == "chat" else
                                       "streamed chat completions (SSE)") + "\n")
        out.append("| connections | proxy | req/s | p50 ms | p99 ms | CPU µs / request | "
                   "CPU / nginx's | errors |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in conns:
            nginx = median_range(of(kind, c, "nginx", "cpu_us_per_request"))
            for p in proxies:
                cpu = of(kind, c, p, "cpu_us_per_request")
                m = median_range(cpu)
                ratio = (f"{m[0] / nginx[0]:.2f}×" if m and nginx and nginx[0] else "–")
                out.append(f"| {c} | {p} | {cell(of(kind, c, p, 'rps'), '{:,.0f}')} | "
                           f"{cell(of(kind, c, p, 'p50_ms'), '{:.3f}')} | "
                           f"{cell(of(kind, c, p, 'p99_ms'), '{:.3f}')} | "
                           f"{cell(cpu, '{:.1f}')} | {ratio} | "
                           f"{sum(of(kind, c, p, 'errors'))} |")
        out.append("")
    fixed = results["fixed_rate"]
    if fixed:
        out.append(f"#### Added latency at a fixed {fixed[0]['rate']:,} req/s (oha, 16 "
                   "connections, latency-corrected), against `direct`\n")
        out.append("| kind | proxy | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for kind in kinds:
            def fr(p, key):
                return [r[key] * 1e3 for r in fixed if (r["kind"], r["proxy"]) == (kind, p)]
            base50 = median_range(fr("direct", "p50"))
            base99 = median_range(fr("direct", "p99"))
            for p in proxies:
                p50, p99 = median_range(fr(p, "p50")), median_range(fr(p, "p99"))
                if p50 is None:
                    continue
                add50 = f"{p50[0] - base50[0]:+.3f}" if base50 else "–"
                add99 = f"{p99[0] - base99[0]:+.3f}" if base99 else "–"
                errors = sum(r["errors"] for r in fixed if (r["kind"], r["proxy"]) == (kind, p))
                out.append(f"| {kind} | {p} | {cell(fr(p, 'p50'), '{:.3f}')} | "
                           f"{cell(fr(p, 'p99'), '{:.3f}')} | {add50} | {add99} | {errors} |")
        out.append("")
    if results["memory"]:
        out.append("#### Peak memory (VmHWM, all of the proxy's processes)\n")
        out.append("| proxy | " + " | ".join(kinds) + " |")
        out.append("| --- |" + " --- |" * len(kinds))
        for p, by_kind in results["memory"].items():
            out.append(f"| {p} | " + " | ".join(f"{by_kind.get(k, 0):.1f} MiB" for k in kinds)
                       + " |")
        out.append("")
    return "\n".join(out)


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["throughput"]
    kinds = sorted({r["kind"] for r in runs}, key=KINDS.index)
    conns = sorted({r["connections"] for r in runs})
    proxies = [p for p in all_proxies(runs) if p != "direct"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False)
    width = 0.8 / max(1, len(proxies))
    for ax, kind in zip(axes[0], kinds):
        for i, p in enumerate(proxies):
            heights = []
            for c in conns:
                m = median_range([r["cpu_us_per_request"] for r in runs
                                  if (r["kind"], r["connections"], r["proxy"]) == (kind, c, p)])
                heights.append(m[0] if m else 0)
            ax.bar([j + i * width for j in range(len(conns))], heights, width, label=p)
        ax.set_xticks([j + width * (len(proxies) - 1) / 2 for j in range(len(conns))],
                      [f"{c} conn." for c in conns])
        ax.set_yscale("log")
        ax.set_ylabel("proxy CPU per request (µs, log)")
        ax.set_title(f"{kind}: CPU per proxied request (median)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results, out):
    text = tables(results)
    (out / "report.md").write_text(text + "\n")
    chart(results, out / "chart.png")
    print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the CI smoke test: 1 s per run, 16 connections, one repetition")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--connections", type=int, nargs="+", default=CONNECTIONS)
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--proxies", nargs="+", default=PROXIES, choices=PROXIES)
    parser.add_argument("--build", action="append", default=[], metavar="NAME=PATH",
                        help="also measure another mvllm binary (e.g. the build before a change)")
    parser.add_argument("--rate", type=int, default=1000, help="fixed rate (0: skip)")
    parser.add_argument("--rate-duration", type=float, default=10.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "proxy-overhead"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    for build in args.build:
        name, _, path = build.partition("=")
        BUILDS[name] = pathlib.Path(path).resolve()
        args.proxies.insert(args.proxies.index("mvllm") + 1 if "mvllm" in args.proxies
                            else len(args.proxies), name)
    if args.quick:
        args.duration, args.reps, args.connections, args.rate_duration = 1.0, 1, [16], 2.0
    out = out_dir(args)
    if args.report_only:
        report(json.loads((out / "results.json").read_text()), out)
        return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mvllm-overhead-"))
    try:
        results = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, out)
    bad = [r for r in results["throughput"] if r["requests"] == 0 or r["errors"]]
    if args.quick and bad:
        sys.exit(f"{len(bad)} runs failed or had errors: {bad}")


if __name__ == "__main__":
    main()
