#!/usr/bin/env bash
# Where mvllm's time goes when it proxies: perf record + flamegraph (bench/profile_proxy.py).
#
#   bash bench/profile_proxy.sh [--kind chat|sse] [--connections 16] [--duration 10]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_bench_tools
command -v perf >/dev/null 2>&1 || apt_install linux-perf
command -v inferno-flamegraph >/dev/null 2>&1 || cargo install --quiet --locked inferno
build_for_bench
exec "$BENCH_VENV/bin/python" bench/profile_proxy.py "$@"
