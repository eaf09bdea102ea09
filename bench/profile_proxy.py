"""Where mvllm's time goes when it proxies: `perf record` of the router (pinned to CPU 0)
while wrk sends it short requests through the same setup as bench/proxy_overhead.py, then a
flat profile (`perf report`) and a flamegraph (inferno).

    bash bench/profile_proxy.sh [--kind chat|sse] [--connections 16] [--duration 10]

Writes bench/results/profile/{perf.data, report.txt, flamegraph.svg}. perf samples on the
CPU clock (a software event), so it works where hardware counters are not exposed (VMs).
Needs perf (Debian's linux-perf) and, for the flamegraph, inferno (`cargo install inferno`).
"""

import argparse
import pathlib
import shutil
import subprocess
import tempfile

from benchlib import ROOT, Procs, cpu_seconds
from proxy_overhead import LOAD_CPU, request_body, start_backend, start_proxy
from benchlib import wrk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="chat", choices=["chat", "sse"])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--proxy", default="mvllm")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mvllm-profile-"))
    procs = Procs()
    try:
        backend = start_backend(procs, tmp)[args.kind]
        url, pgid = start_proxy(procs, tmp, args.proxy, backend)
        wrk(url + "/v1/chat/completions", request_body(args.kind), args.connections, 1,
            cpus=LOAD_CPU)  # warm-up
        data = out / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "-g",
                                 "--call-graph", "dwarf,16384", "-o", str(data), "-p",
                                 str(pgid), "--", "sleep", str(args.duration)],
                                stderr=subprocess.DEVNULL)
        before = cpu_seconds(pgid)
        r = wrk(url + "/v1/chat/completions", request_body(args.kind), args.connections,
                args.duration, cpus=LOAD_CPU)
        used = cpu_seconds(pgid) - before
        perf.wait()
        summary = (f"{args.proxy}, {args.kind}, {args.connections} connections: "
                   f"{r['requests'] / r['duration_s']:.0f} req/s, "
                   f"{used / max(1, r['requests']) * 1e6:.1f} us CPU per request\n")
        print(summary)
        flat = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio",
                               "--sort", "dso,symbol", "--percent-limit", "0.7", "-g", "none"],
                              capture_output=True, text=True).stdout
        (out / "report.txt").write_text(summary + flat)
        if shutil.which("inferno-collapse-perf"):
            script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True,
                                    text=True).stdout
            folded = subprocess.run(["inferno-collapse-perf"], input=script,
                                    capture_output=True, text=True).stdout
            (out / "folded.txt").write_text(folded)
            svg = subprocess.run(["inferno-flamegraph", "--title",
                                  summary.strip()], input=folded, capture_output=True,
                                 text=True).stdout
            (out / "flamegraph.svg").write_text(svg)
        else:
            print("no flamegraph: inferno is not installed (cargo install inferno)")
        print("\n".join(flat.splitlines()[:60]))
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
