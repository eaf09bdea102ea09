#!/usr/bin/env bash
# The routing benchmark (issue 8): every mvllm policy, nginx (round-robin) and the peers
# (sglang-router and vllm-router, from PyPI, with their cache_aware and power_of_two policies)
# replay the same traces in front of the same heterogeneous cluster of `mvllm sim` servers.
# `mvllm:cache-aware+events` follows the sims' KV cache events (issue 13); `mvllm2:…` is two
# router replicas taking the requests in turn.
#
#   bash bench/routing.sh                                  # everything, ~45 min
#   bash bench/routing.sh --reps 1 --duration 5 --workloads c50 --routers mvllm:cache-aware nginx
#
# Results: bench/results/routing.{json,md,png}; see bench/routing.py for the workloads and the
# cluster. Installs what scripts/lib.sh ensure_bench_tools names (nginx, the peers from PyPI
# in bench/.venv, aiohttp and matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_bench_tools
build_for_bench
exec "$BENCH_VENV/bin/python" bench/routing.py "$@"
