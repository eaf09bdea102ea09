"""Streaming at scale: many concurrent slow streams through one proxy — the proxy's memory per
open stream, the delay it adds between a stream's events, and whether every stream arrives
whole.

    bash bench/stream_scale.sh                   # 10,000 streams, a token every 50 ms
    bash bench/stream_scale.sh --quick           # the CI smoke test: 200 short streams
    bash bench/stream_scale.sh --streams 2000 --itl-ms 200 --proxies direct mvllm
    bash bench/stream_scale.sh --pin             # the proxy alone on CPU 0, the rest on CPU 1
    bash bench/stream_scale.sh --streams 10000 --perf 8   # and perf's profile of each proxy

One `mvllm sim` (batch slope 0, so every stream keeps the same inter-token latency however
many run; room for every stream) serves STREAMS streamed chat completions of TOKENS tokens,
opened evenly over RAMP seconds by bench/stream_load.rs, straight (`direct`) and through each
proxy in turn (nginx: 1 worker, no buffering; mvllm: its defaults, access log off). With every
stream open and streaming, the proxy's resident memory is read from /proc; less its memory
before the run, divided by the streams, that is its memory per stream. The gaps between a
stream's consecutive events, against `direct`'s, are the delay the proxy adds. Writes
bench/results/stream-scale/{results.json, report.md, chart.png}.
"""

import argparse
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import (MVLLM, ROOT, Procs, cpu_seconds, free_port, get, machine_ticks,
                      memory_mib, out_dir, perf_report, start_perf, wait_for)

PROXIES = ["direct", "nginx", "mvllm"]

# With --pin: the proxy alone on one core, the sim and the client on the other.
PROXY_CPU, LOAD_CPU = "0", "1"


def raise_fd_limit(streams):
    """Each stream holds two sockets in the proxy (client and server side)."""
    want = max(65536, streams * 3 + 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_binary():
    """bench/stream_load.rs, built like the mvllm under test (release unless it is the debug
    build); its path."""
    profile = [] if MVLLM.parent.name == "debug" else ["--release"]
    out = subprocess.run(["cargo", "build", "--quiet", *profile, "--bench", "stream_load",
                          "--message-format", "json"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "stream_load":
            return msg["executable"]
    raise RuntimeError("cargo built no stream_load executable")


def start_sim(procs, tmp, args):
    port = free_port()
    blocks = args.streams * ((args.tokens + 32) // 16 + 2)
    procs.start([str(MVLLM), "sim", "--host", "127.0.0.1", "--port", str(port),
                 "--itl-ms", str(args.itl_ms), "--batch-slope", "0",
                 "--prefill-us-per-token", "0", "--max-num-seqs", str(args.streams),
                 "--num-gpu-blocks", str(blocks)], open(tmp / "sim.log", "w"),
                cpus=LOAD_CPU if args.pin else None)
    url = f"http://127.0.0.1:{port}"
    wait_for("the sim", lambda: get(url + "/health")[0] == 200)
    return url


def start_proxy(procs, tmp, proxy, backend, streams, threads=0, proxy_cpu=None):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / f"{proxy}.log", "w")
    if proxy == "nginx":
        d = tmp / "nginx"
        (d / "logs").mkdir(parents=True, exist_ok=True)
        (d / "nginx.conf").write_text(f"""worker_processes 1; user root; pid {d}/nginx.pid;
worker_rlimit_nofile {streams * 3 + 1024};
error_log {d}/logs/error.log warn; events {{ worker_connections {streams * 3 + 1024}; }}
http {{ access_log off; upstream backend {{ server {backend[len('http://'):]}; keepalive 1024; }}
server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass http://backend;
proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
proxy_read_timeout 600s; }} }} }}""")
        p = procs.start(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g",
                         "daemon off;"], log, cpus=proxy_cpu)
        wait_for("nginx", lambda: get(url + "/health")[0] == 200)
    else:
        extra = []
        if threads:
            conf = tmp / "pingora.yaml"
            conf.write_text((ROOT / "conf" / "mvllm.yaml").read_text()
                            .replace("threads: 0", f"threads: {threads}"))
            extra = ["--conf", str(conf)]
        config = tmp / "servers.toml"
        config.write_text(f'[servers]\nservers = [{{ url = "{backend}", '
                          f'max_concurrent_requests = {streams * 2} }}]\n'
                          f'[limits]\nmax_connections = {streams * 2}\n')
        p = procs.start([str(MVLLM), "run", "--console", "--no-access-log", "--config",
                         str(config), "--host", "127.0.0.1", "--port", str(port), *extra], log,
                        cpus=proxy_cpu)

        def ready():
            status, body = get(url + "/health")
            return status == 200 and json.loads(body).get("healthy_servers") == 1
        wait_for("mvllm", ready)
    return url, p.pid


def run_one(load, url, pgid, args, tmp):
    hold = tmp / "hold"
    hold.unlink(missing_ok=True)
    before_mib = memory_mib(pgid) if pgid else None
    before_cpu = cpu_seconds(pgid) if pgid else None
    busy0, total0 = machine_ticks()
    limit = args.ramp + args.tokens * args.itl_ms / 1e3 + 120
    pin = ["taskset", "-c", LOAD_CPU] if args.pin else []
    p = subprocess.Popen([*pin, load, url, str(args.streams), str(args.tokens), str(args.ramp),
                          str(hold)], stdout=subprocess.PIPE, text=True)
    held_mib, held_streams, perf = None, None, None
    deadline = time.monotonic() + limit
    while p.poll() is None and time.monotonic() < deadline:
        if held_mib is None and hold.exists():
            held_streams = int(hold.read_text() or 0)
            held_mib = memory_mib(pgid) if pgid else None
            if args.perf and pgid:
                perf = start_perf(pgid, args.perf, tmp / "perf.data")
        time.sleep(0.05)
    if p.poll() is None:
        p.kill()
        raise RuntimeError(f"the load did not finish within {limit:.0f} s")
    report = json.loads(p.stdout.read().strip().splitlines()[-1])
    busy1, total1 = machine_ticks()
    # How busy the whole machine (sim, client and proxy on its cores) was during the run:
    # near 100 %, every process waits for a core and the gaps grow with the queue.
    report["machine_busy"] = (busy1 - busy0) / max(1, total1 - total0)
    if perf:
        perf.wait()
        report["perf_data"] = str(tmp / "perf.data")
    report["open_streams_at_reading"] = held_streams
    if pgid:
        report["rss_before_mib"] = before_mib
        report["rss_open_mib"] = held_mib
        report["peak_rss_mib"] = memory_mib(pgid, "VmHWM")
        report["cpu_seconds"] = cpu_seconds(pgid) - before_cpu
        if held_mib is not None and held_streams:
            report["kib_per_stream"] = (held_mib - before_mib) * 1024 / held_streams
    return report


def report_md(results):
    runs = results["runs"]
    direct = next((r for r in runs if r["proxy"] == "direct"), None)
    a = results["args"]
    out = [f"{a['streams']:,} concurrent streams of {a['tokens']} tokens, a token every "
           f"{a['itl_ms']} ms, opened over {a['ramp']} s.\n",
           "| proxy | completed | lost | memory per open stream | peak RSS | proxy CPU | "
           "machine busy | gap p50 ms | gap p99 ms | added p99 ms | gap max ms | "
           "first event p50 / p99 ms |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        g = r["gap_ms"]
        added = f"{g['p99'] - direct['gap_ms']['p99']:+.2f}" if direct and r is not direct \
            else "–"
        kib = f"{r['kib_per_stream']:.1f} KiB" if r.get("kib_per_stream") is not None else "–"
        rss = f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else "–"
        cpu = f"{r['cpu_seconds']:.1f} s" if r.get("cpu_seconds") is not None else "–"
        busy = f"{r['machine_busy'] * 100:.0f} %" if r.get("machine_busy") is not None else "–"
        out.append(f"| {r['proxy']} | {r['completed']:,} | {r['lost']:,} | {kib} | {rss} | "
                   f"{cpu} | {busy} | {g['p50']:.2f} | {g['p99']:.2f} | {added} | {g['max']:.1f} | "
                   f"{r['first_event_ms']['p50']:.1f} / {r['first_event_ms']['p99']:.1f} |")
    return "\n".join(out) + "\n"


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if r.get("kib_per_stream") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].bar([r["proxy"] for r in runs], [r["kib_per_stream"] for r in runs])
    axes[0].axhline(16, color="red", linestyle="--", label="target: 16 KiB")
    axes[0].set_ylabel("KiB per open stream")
    axes[0].set_title("proxy memory per open stream")
    axes[0].legend()
    allruns = results["runs"]
    axes[1].bar([r["proxy"] for r in allruns], [r["gap_ms"]["p99"] for r in allruns])
    axes[1].axhline(results["args"]["itl_ms"], color="gray", linestyle=":",
                    label="the server's inter-token latency")
    axes[1].set_ylabel("ms")
    axes[1].set_title("gap between a stream's events, p99")
    axes[1].legend()
    fig.suptitle(f"{results['args']['streams']:,} concurrent streams")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--itl-ms", type=float, default=50)
    parser.add_argument("--ramp", type=float, default=10, help="seconds to open the streams")
    parser.add_argument("--proxies", nargs="+", default=PROXIES, choices=PROXIES)
    parser.add_argument("--threads", type=int, default=0,
                        help="mvllm's worker threads (0: its default, one per core)")
    parser.add_argument("--pin", action="store_true",
                        help="the proxy alone on CPU 0, the sim and the client on CPU 1")
    parser.add_argument("--perf", type=float, default=0, metavar="SECONDS",
                        help="record each proxy with perf for this long once every stream "
                             "is open; the flat profile goes to perf-PROXY.txt")
    parser.add_argument("--quick", action="store_true", help="200 streams of 20 tokens")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream-scale"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.tokens, args.ramp = 200, 20, 1
    out = out_dir(args)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
    else:
        limit = raise_fd_limit(args.streams)
        load = load_binary()
        results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
                   "fd_limit": limit, "runs": []}
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="mvllm-streams-"))
        procs = Procs()
        try:
            for proxy in args.proxies:
                # A fresh server for each proxy, so none inherits another's connections.
                backend = start_sim(procs, tmp, args)
                url, pgid = ((backend, None) if proxy == "direct"
                             else start_proxy(procs, tmp, proxy, backend, args.streams, args.threads,
                                             PROXY_CPU if args.pin else None))
                r = run_one(load, url, pgid, args, tmp)
                r["proxy"] = proxy
                if r.get("perf_data"):
                    r["perf_report"] = str(perf_report(r.pop("perf_data"),
                                                       out / f"perf-{proxy}.txt"))
                results["runs"].append(r)
                print(f"{proxy}: {json.dumps(r)}", flush=True)
                procs.stop()
        finally:
            procs.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    text = report_md(results)
    (out / "report.md").write_text(text)
    chart(results, out / "chart.png")
    print(text)
    if args.quick and any(r["lost"] for r in results["runs"]):
        sys.exit("streams were lost")


if __name__ == "__main__":
    main()
