#!/usr/bin/env bash
# Streaming at scale (issue 9): 10,000 concurrent slow streams straight to a simulated server,
# through nginx and through mvllm; memory per open stream, delay added between events, streams
# lost. See bench/stream_scale.py.
#
#   bash bench/stream_scale.sh             # 10,000 streams of 100 tokens at 50 ms, ~2 min
#   bash bench/stream_scale.sh --quick     # smoke test (CI), ~15 s
#   bash bench/stream_scale.sh --streams 2000 --perf 5   # and a perf profile of each proxy
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_bench_tools
if [[ " $* " == *" --perf"* ]]; then command -v perf >/dev/null 2>&1 || apt_install linux-perf; fi
build_for_bench
exec "$BENCH_VENV/bin/python" bench/stream_scale.py "$@"
