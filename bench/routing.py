"""The routing benchmark: the same traces through every router, in front of the same
heterogeneous cluster of `mvllm sim` servers (restarted before every run, so caches start
cold), per-request TTFT and end-to-end time at the client, prefix-cache hits and each
server's share from the servers' own counters.

    bash bench/routing.sh                       # everything (installs what it needs)
    bash bench/routing.sh --reps 1 --duration 5 --workloads a50 c50 --routers mvllm:cache-aware nginx

Run by bench/routing.sh, which installs nginx and, in a virtualenv, the peers from PyPI
(sglang-router, vllm-router) and this script's packages (aiohttp, matplotlib). Writes
bench/results/routing.json (every run), bench/results/routing.md (the tables) and
bench/results/routing.png (the chart). Every address is on 127.0.0.1.
"""

import argparse
import asyncio
import json
import math
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
import time

import aiohttp

from benchlib import MVLLM, ROOT, Procs, free_port, get, out_dir, wait_for

MODEL = "bench-model"

# The cluster: two fast servers and two slow ones (half the speed: a previous GPU
# generation), with different slot counts and KV sizes. KV caches are small enough that the
# shared-prompt and multi-turn workloads evict.
SERVERS = [
    {"name": "fast-1", "itl_ms": 10, "prefill_us": 50, "slots": 16, "kv_blocks": 1536},
    {"name": "fast-2", "itl_ms": 10, "prefill_us": 50, "slots": 12, "kv_blocks": 1024},
    {"name": "slow-1", "itl_ms": 20, "prefill_us": 100, "slots": 12, "kv_blocks": 1024},
    {"name": "slow-2", "itl_ms": 20, "prefill_us": 100, "slots": 8, "kv_blocks": 768},
]
BATCH_SLOPE = 0.02
BYTES_PER_TOKEN = 4  # the sim's tokenizer


def service_seconds(server, prompt_tokens, output_tokens):
    """A request's time on a server with its batch half full (the sim's cost model)."""
    step = server["itl_ms"] / 1e3 * (1 + BATCH_SLOPE * server["slots"] / 2)
    return output_tokens * step + prompt_tokens * server["prefill_us"] / 1e6


def capacity_rps(prompt_tokens, output_tokens):
    """Requests a second the cluster sustains with every slot busy: the 100 % load."""
    return sum(s["slots"] / service_seconds(s, prompt_tokens, output_tokens) for s in SERVERS)


def fair_shares():
    """Each server's fair share of the requests: its throughput (slots over step time)."""
    weights = [s["slots"] / s["itl_ms"] for s in SERVERS]
    return [w / sum(weights) for w in weights]


# ---------------------------------------------------------------- traces

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray").split()


def text(rng, tokens):
    out = []
    while sum(len(w) + 1 for w in out) < tokens * BYTES_PER_TOKEN:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def chat(messages, max_tokens):
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}


def poisson_times(rng, rate, duration):
    t, times = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return times
        times.append(t)


def zipf_index(rng, n, s=1.1):
    weights = [1 / (k + 1) ** s for k in range(n)]
    return rng.choices(range(n), weights)[0]


def trace(workload, duration, seed):
    """[(seconds from start, request body)], the same for every router."""
    rng = random.Random(seed)
    kind, load = workload[0], int(workload[1:] or 50) / 100
    if kind == "a":  # uniform short chats
        rate = load * capacity_rps(150, 48)
        return [(t, chat([{"role": "user", "content": text(rng, rng.randint(50, 250))}],
                         rng.randint(32, 64))) for t in poisson_times(rng, rate, duration)]
    if kind == "b":  # bursts: 50 % on average, in bursts of 2 s worth every 2 s
        rate = load * capacity_rps(150, 48)
        out = []
        for start in range(0, int(duration), 2):
            for i in range(int(rate * 2)):
                out.append((start + i * 0.002, chat(
                    [{"role": "user", "content": text(rng, rng.randint(50, 250))}], 48)))
        return out
    if kind == "c":  # many users sharing a few long system prompts (Zipf)
        systems = [f"System prompt {i}. " + text(random.Random(i), 1500) for i in range(16)]
        rate = load * capacity_rps(1500 * 0.3 + 60, 32)
        return [(t, chat([{"role": "system", "content": systems[zipf_index(rng, 16)]},
                          {"role": "user", "content": text(rng, rng.randint(20, 100))}], 32))
                for t in poisson_times(rng, rate, duration)]
    if kind == "d":  # multi-turn chats resending the growing history
        rate = load * capacity_rps(700 * 0.3 + 60, 48)
        conversations = {}
        out = []
        for n, t in enumerate(poisson_times(rng, rate, duration)):
            # Most requests continue one of the open conversations; some start a new one.
            if rng.random() < 0.15 or len(conversations) < 8:
                conversations[n] = [{"role": "system", "content": text(rng, 300)}]
            key = rng.choice(list(conversations))
            history = conversations[key]
            history.append({"role": "user", "content": text(rng, rng.randint(30, 120))})
            # The conversation's id as the OpenAI `user` field: the session key of mvllm's
            # `session` policy (the other routers ignore it).
            out.append((t, chat(list(history), 48) | {"user": f"conversation-{key}"}))
            history.append({"role": "assistant", "content": text(rng, 48)})
            if len(history) > 24:
                del conversations[key]
        return out
    if kind == "e":  # a mix of long and short outputs
        rate = load * capacity_rps(150, 0.8 * 16 + 0.2 * 400)
        return [(t, chat([{"role": "user", "content": text(rng, rng.randint(50, 250))}],
                         16 if rng.random() < 0.8 else 400))
                for t in poisson_times(rng, rate, duration)]
    raise ValueError(workload)


WORKLOADS = {
    "a50": "uniform short chats, 50 %", "a80": "uniform short chats, 80 %",
    "a95": "uniform short chats, 95 %", "b50": "bursts, 50 % on average",
    "c50": "shared system prompts (Zipf), 50 %", "c80": "shared system prompts (Zipf), 80 %",
    "d50": "multi-turn chats, 50 %", "d80": "multi-turn chats, 80 %",
    "e50": "long and short outputs, 50 %",
}

# ---------------------------------------------------------------- processes


def start_sims(procs, tmp, events=False):
    """The cluster; with `events`, each sim publishes its KV cache events (vLLM's
    --kv-events-config) and the list holds (url, live endpoint, replay endpoint)."""
    urls, sources = [], []
    for i, s in enumerate(SERVERS):
        port = free_port()
        args = [str(MVLLM), "sim", "--host", "127.0.0.1", "--port", str(port),
                "--model", MODEL, "--itl-ms", str(s["itl_ms"]),
                "--prefill-us-per-token", str(s["prefill_us"]),
                "--batch-slope", str(BATCH_SLOPE), "--max-num-seqs", str(s["slots"]),
                "--num-gpu-blocks", str(s["kv_blocks"]), "--seed", str(i)]
        if events:
            live, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            args += ["--kv-events-config", json.dumps({
                "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": live,
                "replay_endpoint": replay})]
            sources.append((live, replay))
        procs.start(args, open(tmp / f"sim-{i}.log", "w"))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_for(url, lambda: get(url + "/health")[0] == 200)
    return urls, sources


def start_router(procs, tmp, router, urls, sources=(), replica=0):
    """One router; returns its URL. `mvllm:POLICY+events` follows the sims' KV cache events
    (`sources`); `mvllm2:…` is two replicas of it (started by the caller, replica 0 and 1)."""
    kind, _, policy = router.partition(":")
    policy = policy.removesuffix("+events")
    port = free_port()
    log = open(tmp / f"router-{kind}-{replica}.log", "w")
    if kind in ("mvllm", "mvllm2"):
        def entry(u, s, source):
            events = (f', kv_events = "{source[0]}", kv_events_replay = "{source[1]}"'
                      if source else "")
            return f'  {{ url = "{u}", max_concurrent_requests = {s["slots"]}{events} }}'
        servers = ",\n".join(entry(u, s, source) for u, s, source in
                             zip(urls, SERVERS, list(sources) or [None] * len(urls)))
        config = tmp / f"servers-{replica}.toml"
        config.write_text(f"[servers]\nservers = [\n{servers}\n]\n[config]\n"
                          f"metrics_interval = 0.5\n[routing]\npolicy = \"{policy}\"\n")
        procs.start([str(MVLLM), "run", "--console", "--no-access-log", "--config", str(config), "--host",
                     "127.0.0.1", "--port", str(port)], log)

        def ready():
            status, body = get(f"http://127.0.0.1:{port}/health")
            if not (status == 200 and json.loads(body).get("healthy_servers") == len(urls)):
                return False
            if not sources:
                return True
            # With events: every server's subscription live before the trace starts.
            _, stats = get(f"http://127.0.0.1:{port}/load-stats")
            return all((s.get("kv_events") or {}).get("engines", [{}])[0].get("trusted")
                       for s in json.loads(stats)["servers"])
    elif kind == "nginx":
        (tmp / "nginx" / "logs").mkdir(parents=True, exist_ok=True)
        upstreams = "".join(f"server {u[len('http://'):]};" for u in urls)
        conf = tmp / "nginx" / "nginx.conf"
        conf.write_text(f"""worker_processes 1; user root; pid {tmp}/nginx/nginx.pid;
error_log {tmp}/nginx/logs/error.log warn; events {{ worker_connections 4096; }}
http {{ access_log off; upstream sims {{ {upstreams} keepalive 64; }}
server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://sims;
proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
proxy_read_timeout 600s; }} }} }}""")
        procs.start(["nginx", "-p", str(tmp / "nginx"), "-c", str(conf), "-g", "daemon off;"],
                    log)

        def ready():
            return get(f"http://127.0.0.1:{port}/health")[0] == 200
    elif kind in ("sglang", "vllm"):
        exe = ([sys.executable, "-m", "sglang_router.launch_router"] if kind == "sglang"
               else [str(pathlib.Path(sys.executable).parent / "vllm-router")])
        procs.start(exe + ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls,
                           "--policy", policy, "--prometheus-port", str(free_port()),
                           "--log-level", "warn" if kind == "sglang" else "warning"], log)

        def ready():
            return get(f"http://127.0.0.1:{port}/v1/models")[0] == 200
    else:
        raise ValueError(router)
    wait_for(router, ready)
    return f"http://127.0.0.1:{port}"


def sim_counters(urls):
    """Per server: (successful requests, prefix-cache queries, prefix-cache hits)."""
    out = []
    for url in urls:
        _, body = get(url + "/metrics", timeout=5)
        total = {"vllm:request_success_total": 0.0, "vllm:prefix_cache_queries_total": 0.0,
                 "vllm:prefix_cache_hits_total": 0.0}
        for line in body.splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{")[0].split(" ")[0]
            if name in total:
                total[name] += float(line.rsplit(" ", 1)[1])
        out.append(tuple(total.values()))
    return out


# ---------------------------------------------------------------- load


async def one(session, url, body, results):
    started = time.perf_counter()
    ttft = None
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as r:
            ok = r.status == 200
            async for chunk in r.content.iter_any():
                if ttft is None and b'"content":"' in chunk and b'"content":""' not in chunk:
                    ttft = time.perf_counter() - started
    except Exception:  # noqa: BLE001 - counted as an error
        ok = False
    e2e = time.perf_counter() - started
    results.append((ok and ttft is not None, ttft, e2e))


async def replay(urls, requests, limit):
    """Sends the trace; with several router URLs (replicas), each request to the next one."""
    results = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=limit)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        tasks = []
        for n, (at, body) in enumerate(requests):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            url = urls[n % len(urls)]
            tasks.append(asyncio.create_task(one(session, url, body, results)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return results, wall


def events_report(router_url):
    """What a router following KV cache events saw: how it tokenized, and its subscriptions'
    gaps, replays and losses summed over the servers."""
    _, body = get(router_url + "/load-stats", timeout=5)
    stats = json.loads(body)
    engines = [e for s in stats["servers"] for e in (s.get("kv_events") or {}).get("engines", [])]
    total = {k: sum(e[k] for e in engines) for k in ("events_received", "gaps", "replays", "lost")}
    return {"tokenization": stats.get("tokenization"), **total}


def percentile(values, q):
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_once(router, workload, duration, seed, tmp):
    procs = Procs()
    try:
        urls, sources = start_sims(procs, tmp, events=router.endswith("+events"))
        replicas = 2 if router.startswith("mvllm2:") else 1
        routers = [start_router(procs, tmp, router, urls, sources, replica)
                   for replica in range(replicas)]
        before = sim_counters(urls)
        requests = trace(workload, duration, seed)
        results, wall = asyncio.run(replay(routers, requests, limit=duration + 120))
        after = sim_counters(urls)
        events = [events_report(r) for r in routers] if router.endswith("+events") else None
    finally:
        procs.stop()
    good = [r for r in results if r[0]]
    served = [a[0] - b[0] for a, b in zip(after, before)]
    queries = sum(a[1] - b[1] for a, b in zip(after, before))
    hits = sum(a[2] - b[2] for a, b in zip(after, before))
    shares = [s / max(1, sum(served)) for s in served]
    return {
        "router": router, "workload": workload, "seed": seed, "requests": len(requests),
        "errors": len(results) - len(good),
        "ttft_p50": percentile([r[1] for r in good], 0.5),
        "ttft_p99": percentile([r[1] for r in good], 0.99),
        "e2e_p50": percentile([r[2] for r in good], 0.5),
        "e2e_p99": percentile([r[2] for r in good], 0.99),
        "throughput": len(good) / wall,
        "hit_rate": hits / queries if queries else 0.0,
        "shares": shares,
        "over_fair": max(s / f for s, f in zip(shares, fair_shares())),
        "events": events,
    }


# ---------------------------------------------------------------- report

ROUTERS = ["mvllm:least-load", "mvllm:cache-aware", "mvllm:cache-aware+events",
           "mvllm:session", "mvllm:power-of-two", "mvllm:round-robin", "mvllm:random",
           "mvllm2:cache-aware", "mvllm2:cache-aware+events", "nginx", "sglang:cache_aware",
           "sglang:power_of_two", "vllm:cache_aware", "vllm:power_of_two"]


def summary(runs):
    """(workload, router) -> {figure: (median, min, max)}."""
    out = {}
    for run in runs:
        out.setdefault((run["workload"], run["router"]), []).append(run)
    figures = ["ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "throughput", "hit_rate",
               "over_fair", "errors"]
    return {key: {f: (statistics.median(r[f] for r in rs), min(r[f] for r in rs),
                      max(r[f] for r in rs)) for f in figures} | {"reps": len(rs)}
            for key, rs in out.items()}


def fmt(value, unit):
    median, low, high = value
    if unit == "ms":
        return f"{median * 1e3:.0f} ({low * 1e3:.0f}–{high * 1e3:.0f})"
    if unit == "%":
        return f"{median * 100:.0f} %"
    if unit == "x":
        return f"{median:.2f}"
    if unit == "n":
        return f"{median:.0f}"
    return f"{median:.1f}"


def tables(runs):
    s = summary(runs)
    lines = []
    for workload in WORKLOADS:
        rows = [(r, s[(workload, r)]) for r in ROUTERS if (workload, r) in s]
        if not rows:
            continue
        lines += [f"#### ({workload}) {WORKLOADS[workload]}", "",
                  "| router | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | req/s | "
                  "prefix hits | max share / fair | errors |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for router, f in rows:
            lines.append(f"| {router} | {fmt(f['ttft_p50'], 'ms')} | {fmt(f['ttft_p99'], 'ms')} | "
                         f"{fmt(f['e2e_p50'], 'ms')} | {fmt(f['e2e_p99'], 'ms')} | "
                         f"{fmt(f['throughput'], '')} | {fmt(f['hit_rate'], '%')} | "
                         f"{fmt(f['over_fair'], 'x')} | {fmt(f['errors'], 'n')} |")
        lines.append("")
    return "\n".join(lines)


def targets(runs):
    """Issue 8's targets, each with the figures it compares and whether it is met."""
    s = summary(runs)
    lines = ["| target | workload | figures | met |", "| --- | --- | --- | --- |"]

    def med(w, r, f):
        return s[(w, r)][f][0] if (w, r) in s else None

    def row(target, w, text, ok):
        lines.append(f"| {target} | {w} | {text} | {'yes' if ok else '**no**'} |")

    peers_ca = ["sglang:cache_aware", "vllm:cache_aware"]
    peers = peers_ca + ["sglang:power_of_two", "vllm:power_of_two"]
    for w in ("c50", "c80", "d50", "d80"):
        ours = "mvllm:cache-aware"
        if med(w, ours, "ttft_p99") is None:
            continue
        p99 = {r: med(w, r, "ttft_p99") for r in peers_ca if med(w, r, "ttft_p99") is not None}
        if p99:
            best = min(p99, key=p99.get)
            row("TTFT p99 ≤ ½ the better peer cache_aware", w,
                f"{med(w, ours, 'ttft_p99') * 1e3:.0f} ms vs {best} {p99[best] * 1e3:.0f} ms "
                f"({med(w, ours, 'ttft_p99') / p99[best]:.2f}×)",
                med(w, ours, "ttft_p99") <= 0.5 * p99[best])
        p50 = {r: med(w, r, "ttft_p50") for r in peers if med(w, r, "ttft_p50") is not None}
        if p50:
            best = min(p50, key=p50.get)
            row("TTFT p50 ≤ the best peer's", w,
                f"{med(w, ours, 'ttft_p50') * 1e3:.0f} ms vs {best} {p50[best] * 1e3:.0f} ms",
                med(w, ours, "ttft_p50") <= p50[best])
        sg = med(w, "sglang:cache_aware", "hit_rate")
        if sg:
            row("prefix hits ≥ 90 % of sglang-router's", w,
                f"{med(w, ours, 'hit_rate') * 100:.0f} % vs {sg * 100:.0f} % "
                f"({med(w, ours, 'hit_rate') / sg:.2f}×)", med(w, ours, "hit_rate") >= 0.9 * sg)
    for w in ("c50", "c80", "d50", "d80"):
        for approx in ("mvllm:cache-aware", "mvllm2:cache-aware"):
            events = approx + "+events"
            if med(w, approx, "hit_rate") is None or med(w, events, "hit_rate") is None:
                continue
            replicas = "two replicas" if approx.startswith("mvllm2") else "one router"
            row(f"KV events: more prefix hits and lower TTFT p99 than approximate ({replicas})",
                w, f"hits {med(w, events, 'hit_rate') * 100:.0f} % vs "
                f"{med(w, approx, 'hit_rate') * 100:.0f} %; TTFT p99 "
                f"{med(w, events, 'ttft_p99') * 1e3:.0f} vs {med(w, approx, 'ttft_p99') * 1e3:.0f} ms",
                med(w, events, "hit_rate") > med(w, approx, "hit_rate")
                and med(w, events, "ttft_p99") < med(w, approx, "ttft_p99"))
    for w in ("a50", "a80", "a95", "e50"):
        if (w, "nginx") not in s:
            continue
        rr = s[(w, "nginx")]["ttft_p99"]
        ours = [r for r in ROUTERS if r.startswith("mvllm:") and r != "mvllm:round-robin"
                and (w, r) in s]
        # Worse beyond noise: even its best repetition is worse than round-robin's worst.
        worse = [r for r in ours if s[(w, r)]["ttft_p99"][1] > rr[2]]
        row("no policy of ours worse than round-robin (nginx), TTFT p99", w,
            f"nginx {rr[0] * 1e3:.0f} ms (max {rr[2] * 1e3:.0f}); " + ", ".join(
                f"{r[6:]} {med(w, r, 'ttft_p99') * 1e3:.0f}"
                f" (min {s[(w, r)]['ttft_p99'][1] * 1e3:.0f})" for r in ours), not worse)
        everyone = [r for r in ROUTERS if (w, r) in s]
        best = min(everyone, key=lambda r: med(w, r, "ttft_p99"))
        ll = s.get((w, "mvllm:least-load"))
        if ll:
            low, high = ll["ttft_p99"][1], s[(w, best)]["ttft_p99"][2]
            row("least-load best or within noise of best (TTFT p99)", w,
                f"least-load {ll['ttft_p99'][0] * 1e3:.0f} ms (min {low * 1e3:.0f}), best "
                f"{best} {med(w, best, 'ttft_p99') * 1e3:.0f} ms (max {high * 1e3:.0f})",
                low <= high)
    return "\n".join(lines)


def chart(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = summary(runs)
    panels = [("TTFT p99 (ms, lower is better; log scale)", "ttft_p99", 1e3,
               ["a80", "e50", "c50", "c80", "d50", "d80"]),
              ("prefix-cache hit rate (%, higher is better)", "hit_rate", 100,
               ["c50", "c80", "d50", "d80"])]
    routers = [r for r in ROUTERS if any(k[1] == r for k in s)]
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(routers))
    for ax, (title, figure, scale, workloads) in zip(axes, panels):
        workloads = [w for w in workloads if any((w, r) in s for r in routers)]
        for i, router in enumerate(routers):
            xs = [j + i * width for j in range(len(workloads))]
            ys = [s[(w, router)][figure][0] * scale if (w, router) in s else 0
                  for w in workloads]
            ax.bar(xs, ys, width, label=router, color=colors[(2 * i) % 20 + (i >= 10)])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))], workloads)
        ax.set_title(title)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of trace per run")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--routers", nargs="+", default=ROUTERS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the tables and chart from the runs in routing.json")
    parser.add_argument("--quick", action="store_true",
                        help="the CI smoke test: one short run of a50 for mvllm, nginx and "
                             "each peer")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.workloads = 1, 3.0, ["a50"]
        args.routers = ["mvllm:least-load", "nginx", "sglang:cache_aware", "vllm:cache_aware"]
    out = out_dir(args)
    if args.report_only:
        report(json.loads((out / "routing.json").read_text()), out)
        return
    runs = []
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mvllm-routing-"))
    started = time.monotonic()
    try:
        # Interleaved: each repetition runs every (workload, router) once, in a shuffled
        # order, so drift on the machine spreads over all routers.
        for rep in range(args.reps):
            order = [(w, r) for w in args.workloads for r in args.routers]
            random.Random(rep).shuffle(order)
            for n, (workload, router) in enumerate(order, 1):
                run = run_once(router, workload, args.duration, seed=1000 + rep, tmp=tmp)
                run["rep"] = rep
                runs.append(run)
                print(f"[{time.monotonic() - started:6.0f} s] rep {rep + 1}/{args.reps} "
                      f"{n}/{len(order)} {workload} {router}: TTFT p50 "
                      f"{run['ttft_p50'] * 1e3:.0f} ms p99 {run['ttft_p99'] * 1e3:.0f} ms, "
                      f"hits {run['hit_rate'] * 100:.0f} %, errors {run['errors']}", flush=True)
                (out / "routing.json").write_text(json.dumps(runs, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(runs, out)
    if args.quick and any(r["errors"] or not r["throughput"] for r in runs):
        sys.exit("a router failed requests")


def report(runs, out):
    (out / "routing.md").write_text(tables(runs) + "\n#### Targets\n\n" + targets(runs) + "\n")
    chart(runs, out / "routing.png")
    print((out / "routing.md").read_text())


if __name__ == "__main__":
    main()
