#!/usr/bin/env bash
# How much load one `mvllm sim` process carries, so that router benchmarks measure the router
# and not the simulator.
#
#   bash bench/sim_capacity.sh            # ~30 s; needs wrk (installed with apt-get if missing)
#   DURATION=2 bash bench/sim_capacity.sh # smoke test (CI)
#
# A. Short non-stream chat requests (4 tokens, 1 ms/token) from 64 connections: requests/s and
#    latency percentiles. The goal is at least 2,000 requests/s.
# B. 1,000 concurrent streams of 50 tokens at 20 ms/token (batch slope 0, so the ideal stream
#    lasts 50 x 20 ms = 1.00 s whatever the batch): observed stream duration against that ideal.
#    A ratio near 1.0 means the simulator keeps its own clock under that load.
# For both: the simulator's CPU time (of one core) and peak memory, from /proc.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
command -v wrk >/dev/null || apt_install wrk
build_for_bench
BIN=$MVLLM_BIN
DURATION=${DURATION:-10}

start_sim() {
  local out; out=$(mktemp)
  "$BIN" sim --host 127.0.0.1 --port 0 "$@" >"$out" 2>/dev/null &
  SIM_PID=$!
  for _ in $(seq 100); do
    SIM_URL=$(grep -o 'http://[0-9.:]*' "$out" || true)
    [ -n "$SIM_URL" ] && curl -sf "$SIM_URL/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "sim did not start" >&2; exit 1
}
stop_sim() { kill "$SIM_PID" 2>/dev/null; wait "$SIM_PID" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SIM_PID/stat"; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$SIM_PID/status"; }
trap 'stop_sim' EXIT
TICKS=$(getconf CLK_TCK)

echo "== A. short non-stream requests, 64 connections, ${DURATION}s"
start_sim --itl-ms 1 --prefill-us-per-token 0
t0=$(cpu_ticks)
BODY='{"model":"mvllm/sim-model","messages":[{"role":"user","content":"Say hi"}],"max_tokens":4}' \
  wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/post.lua "$SIM_URL/v1/chat/completions" | tee /tmp/sim_bench_a.txt
t1=$(cpu_ticks)
echo "sim CPU: $(( (t1 - t0) * 100 / TICKS / DURATION ))% of one core; peak RSS $(peak_rss_mb) MiB"
stop_sim

echo
echo "== B. 1000 concurrent streams, 50 tokens at 20 ms each (ideal stream: 1.00 s), ${DURATION}s"
start_sim --itl-ms 20 --batch-slope 0 --max-num-seqs 1024 --prefill-us-per-token 0
t0=$(cpu_ticks)
( sleep $(( DURATION / 2 )); curl -s "$SIM_URL/metrics" | grep '^vllm:num_requests_running{' \
    | sed 's/^/mid-run: /' ) &
PROBE=$!
BODY='{"model":"mvllm/sim-model","messages":[{"role":"user","content":"Say hi"}],"max_tokens":50,"stream":true}' \
  wrk -t1 -c1000 -d"${DURATION}s" --timeout 10s --latency -s bench/post.lua "$SIM_URL/v1/chat/completions" | tee /tmp/sim_bench_b.txt
wait "$PROBE"
t1=$(cpu_ticks)
echo "sim CPU: $(( (t1 - t0) * 100 / TICKS / DURATION ))% of one core; peak RSS $(peak_rss_mb) MiB"
awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {
  printf "stream duration / ideal 1.00 s: p50 %s, p99 %s\n", p50, p99 }' /tmp/sim_bench_b.txt
