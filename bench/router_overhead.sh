#!/usr/bin/env bash
# What the router adds, measured against going straight to a backend, in one run on one
# machine (release builds; wrk on loopback).
#
#   bash bench/router_overhead.sh        # ~1.5 minutes; installs wrk and nginx if missing
#   BASELINE=/tmp/mvllm-old bash bench/router_overhead.sh   # also measures another build
#   DURATION=1 bash bench/router_overhead.sh                 # smoke test (CI)
#
# A. Throughput and latency of short chat requests (4 tokens at 1 ms), 32 connections:
#    straight to one simulated server, through nginx (a plain keep-alive reverse proxy, 2
#    workers, no buffering, no access log) in front of it, and through the router in front of
#    it (so the differences are what each proxy adds): without its access log (as nginx here),
#    and with it (the default in console mode; written to /dev/null). Also each proxy's CPU
#    time per request and the router's peak memory. With BASELINE=/path/to/an/older/mvllm, that
#    binary is measured too, in the same run (e.g. the build before a change).
# B. Time to first token of a slow stream (one token every 200 ms), 20 requests each:
#    straight vs through the router.
# C. A burst of 40 simultaneous requests over servers of capacity 4 and 16: how it splits.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
command -v wrk >/dev/null || apt_install wrk
command -v nginx >/dev/null || apt_install nginx
build_for_bench
BIN=$MVLLM_BIN
DURATION=${DURATION:-10}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

# start NAME ARGS...: runs $RUN_BIN (default: this build) with ARGS, waits for its address,
# sets URL_<NAME> and PID_<NAME>.
start() {
  local name=$1; shift
  "${RUN_BIN:-$BIN}" "$@" >"$TMP/$name.out" 2>/dev/null &
  local pid=$!
  PIDS+=("$pid")
  local url=""
  for _ in $(seq 200); do
    url=$(grep -o 'http://[0-9.:]*' "$TMP/$name.out" | head -1 || true)
    [ -n "$url" ] && curl -s -o /dev/null "$url/health" && break
    sleep 0.05
  done
  [ -n "$url" ] || { echo "$name did not start" >&2; exit 1; }
  printf -v "URL_$name" '%s' "$url"
  printf -v "PID_$name" '%s' "$pid"
}
wait_healthy() { # URL N
  for _ in $(seq 200); do
    [ "$(curl -s "$1/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["healthy_servers"])' 2>/dev/null)" = "$2" ] && return 0
    sleep 0.05
  done
  echo "router never saw $2 healthy servers" >&2; exit 1
}
# router_for NAME "URL CAPACITY"... [-- extra config line]: a router (this build, console mode).
router_for() {
  local name=$1; shift
  local n=0 extra=""
  { echo "[servers]"; echo "servers = ["
    while [ $# -gt 0 ]; do
      if [ "$1" = "--" ]; then extra=$2; break; fi
      set -- $1 "${@:2}"
      echo "  { url = \"$1\", max_concurrent_requests = $2 },"; n=$((n + 1)); shift 2
    done
    echo "]"; echo "[config]"; echo "$extra"; } > "$TMP/$name.toml"
  start "$name" run --console --host 127.0.0.1 --port 0 --config "$TMP/$name.toml" ${ROUTER_FLAGS:-}
  local var="URL_$name"; wait_healthy "${!var}" "$n"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
TICKS=$(getconf CLK_TCK)
BODY='{"model":"mvllm/sim-model","messages":[{"role":"user","content":"Say hi"}],"max_tokens":4}'
wrk_run() { BODY=$BODY wrk -t1 -c32 -d"${DURATION}s" --latency -s bench/post.lua "$1/v1/chat/completions"; }
field() { awk -v k="$1" '$1 == k {print $2}' "$2"; }

echo "== A. short requests, 32 connections, ${DURATION}s each"
start simA sim --host 127.0.0.1 --port 0 --itl-ms 1 --prefill-us-per-token 0
ROUTER_FLAGS=--no-access-log router_for R "$URL_simA 256"
router_for RL "$URL_simA 256"
TARGETS=(direct nginx router router+log)
if [ -n "${BASELINE:-}" ]; then
  RUN_BIN=$BASELINE router_for RB "$URL_simA 256"
  TARGETS+=(baseline)
fi

# nginx as the baseline proxy, configured the way one would put it in front of vLLM.
mkdir -p "$TMP/nginx/logs"
NGINX_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$TMP/nginx/nginx.conf" <<NGINX
worker_processes 2;
user root;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream sim { server ${URL_simA#http://}; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }
  }
}
NGINX
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=("$!")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/health" && break; sleep 0.05; done
nginx_ticks() { local t=0; for p in $(pgrep -f "nginx: worker process"); do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }

# measure NAME URL TICKS_COMMAND: one wrk run, and the proxy's CPU ticks during it.
measure() {
  local t0 t1
  t0=$($3)
  wrk_run "$2" > "$TMP/$1.txt"
  t1=$($3)
  echo $((t1 - t0)) > "$TMP/$1.ticks"
}
none_ticks() { echo 0; }
measure direct "$URL_simA" none_ticks
measure nginx "http://127.0.0.1:$NGINX_PORT" nginx_ticks
measure router "$URL_R" "cpu_ticks $PID_R"
measure router+log "$URL_RL" "cpu_ticks $PID_RL"
[ -n "${BASELINE:-}" ] && measure baseline "$URL_RB" "cpu_ticks $PID_RB"
for f in "${TARGETS[@]}"; do
  rps=$(awk '/^Requests\/sec/ {print $2}' "$TMP/$f.txt")
  p50=$(field 50% "$TMP/$f.txt"); p99=$(field 99% "$TMP/$f.txt")
  errors=$(grep -o 'non-200 answers: [0-9]*' "$TMP/$f.txt")
  printf '  %-10s %9s req/s   p50 %8s   p99 %8s   %s\n' "$f" "$rps" "$p50" "$p99" "$errors"
done
python3 - "$TMP" "$TICKS" "${TARGETS[@]}" <<'PY'
import re, sys
tmp, hz, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def stats(name):
    text = open(f"{tmp}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    n = int(re.search(r"(\d+) requests in", text).group(1))
    ticks = int(open(f"{tmp}/{name}.ticks").read())
    return rps, n, ticks
s = {name: stats(name) for name in names}
d = s["direct"][0]
print("  throughput against direct: " + ", ".join(f"{k} {v[0] / d:.2f}x" for k, v in s.items() if k != "direct"))
print("  throughput against nginx:  " + ", ".join(f"{k} {v[0] / s['nginx'][0]:.2f}x" for k, v in s.items() if k not in ("direct", "nginx")))
print("  CPU per request: " + ", ".join(f"{k} {v[2] / hz / v[1] * 1e6:.0f} us" for k, v in s.items() if k != "direct"))
PY
echo "  router peak RSS: $(peak_rss_mb "$PID_R") MiB (with access log: $(peak_rss_mb "$PID_RL") MiB)"

echo
echo "== B. time to first token, one token per 200 ms (median / p90 of 20, in ms)"
start slow sim --host 127.0.0.1 --port 0 --itl-ms 200 --batch-slope 0
router_for RS "$URL_slow 4"
echo "  direct:        $(python3 bench/ttft.py "$URL_slow" 20)"
echo "  through router: $(python3 bench/ttft.py "$URL_RS" 20)"

echo
echo "== C. burst of 40 simultaneous requests over capacities 4 and 16"
start small sim --host 127.0.0.1 --port 0 --itl-ms 20 --max-num-seqs 64
start large sim --host 127.0.0.1 --port 0 --itl-ms 20 --max-num-seqs 64
router_for RB "$URL_small 4" "$URL_large 16" -- "metrics_interval = 30"
for _ in $(seq 40); do
  curl -s -o /dev/null "$URL_RB/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"mvllm/sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":10}' &
done
wait_curls() { while [ "$(jobs -rp | wc -l)" -gt 0 ]; do sleep 0.05; done; }
count() { curl -s "$1/metrics" | awk '/^vllm:request_success_total\{/ {s += $2} END {print s}'; }
for _ in $(seq 100); do
  [ "$(( $(count "$URL_small" | cut -d. -f1) + $(count "$URL_large" | cut -d. -f1) ))" -ge 40 ] && break
  sleep 0.1
done
echo "  split small:large = $(count "$URL_small"):$(count "$URL_large") (ideal 8:32)"
