#!/usr/bin/env bash
# Proxy overhead (issue 9): mvllm, nginx, vllm-router, sglang-router and the Python mvllm
# 0.1.0 in front of an nginx backend returning fixed vLLM-shaped bodies; CPU per request,
# throughput, latency, memory; see bench/proxy_overhead.py.
#
#   bash bench/proxy_overhead.sh            # everything, ~25 min
#   bash bench/proxy_overhead.sh --quick    # smoke test (CI), ~1 min
#
# Installs nginx and wrk (apt), oha (cargo install), and into bench/.venv the peers from
# PyPI (vllm-router, sglang-router, and the Python mvllm 0.1.0) and matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_bench_tools
build_for_bench
exec "$BENCH_VENV/bin/python" bench/proxy_overhead.py "$@"
