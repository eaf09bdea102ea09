"""What the benchmark scripts share: free ports, polling for readiness, process groups, the
CPU time and memory of a process group from /proc, wrk's and oha's reports, and medians.
Every address is on 127.0.0.1."""

import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The build under test: MVLLM_BIN (set by the bench scripts), else the release build.
MVLLM = pathlib.Path(os.environ.get("MVLLM_BIN") or ROOT / "target" / "release" / "mvllm")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except Exception as e:  # noqa: BLE001 - any failure means "not yet"
        return None, str(e)


def wait_for(what, check, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready in {limit:.0f} s")


class Procs:
    """Processes started in their own session (so a group holds each one's children), all
    stopped together."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, cpus=None, cwd=None):
        if cpus is not None:
            args = ["taskset", "-c", cpus, *args]
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             cwd=cwd)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []


def group_pids(pgid):
    """Every live process of the process group `pgid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5, pgrp
            pids.append(int(entry))
    return pids


def cpu_seconds(pgid):
    """User + system CPU time of a process group so far (its live processes)."""
    total = 0
    for pid in group_pids(pgid):
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def machine_ticks():
    """The whole machine's (busy, total) CPU ticks so far, from /proc/stat: two readings give
    how busy every core was in between."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def memory_mib(pgid, key="VmRSS"):
    """The group's resident memory (`VmRSS`) or the sum of its processes' peaks (`VmHWM`)."""
    kib = 0
    for pid in group_pids(pgid):
        try:
            for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


def wrk(url, body, connections, duration, cpus=None, timeout=10):
    """One wrk run (POST `body`); its report as a dict (see bench/post.lua)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout}s",
           "-s", str(ROOT / "bench" / "post.lua"), url]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, env={**os.environ, "BODY": body}, capture_output=True, text=True,
                         timeout=duration + timeout + 30, check=True).stdout
    for line in out.splitlines():
        if line.startswith("wrk-json: "):
            return json.loads(line[len("wrk-json: "):])
    raise RuntimeError(f"wrk printed no report:\n{out}")


def oha(url, body, rate, connections, duration, cpus=None):
    """A fixed request rate from oha; latency percentiles (seconds) and counts."""
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{max(1, round(duration))}s", "-q", str(rate),
           "--latency-correction", "-c", str(connections), "-m", "POST",
           "-H", "Content-Type: application/json", "-d", body, url]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    report = json.loads(out)
    pct = report["latencyPercentiles"]
    codes = report.get("statusCodeDistribution", {})
    ok = codes.get("200", 0)
    # Requests still in flight when the run ends are "aborted due to deadline": not errors.
    failed = sum(n for why, n in report.get("errorDistribution", {}).items()
                 if "deadline" not in why)
    return {"p50": pct["p50"], "p99": pct["p99"], "ok": ok,
            "errors": sum(codes.values()) - ok + failed,
            "rps": report["summary"]["requestsPerSec"]}


def median_range(values):
    """(median, min, max) of the non-None values, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def out_dir(args):
    """The folder a script writes its results to: `--out`, or under it `quick/` for a smoke
    test, so that a quick run's figures never replace a real run's."""
    out = pathlib.Path(args.out)
    if args.quick:
        out = out / "quick"
    out.mkdir(parents=True, exist_ok=True)
    return out


def start_perf(pid, seconds, data):
    """`perf record` (CPU clock, DWARF call graphs) of process `pid` for `seconds`, into `data`;
    the Popen to wait for."""
    return subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g",
                             "--call-graph", "dwarf,16384", "-o", str(data), "-p", str(pid),
                             "--", "sleep", str(seconds)], stderr=subprocess.DEVNULL)


def perf_report(data, path):
    """perf's flat profile of the recording `data`, by symbol, written to `path`."""
    flat = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio", "--sort",
                           "dso,symbol", "--percent-limit", "0.5", "-g", "none"],
                          capture_output=True, text=True).stdout
    path.write_text(flat)
    return path
