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
# cluster. Installs nginx (apt) and, in bench/.venv-routing, sglang-router, vllm-router,
# aiohttp and matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
command -v nginx >/dev/null || apt_install nginx
VENV=bench/.venv-routing
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$VENV"; python3 -m venv "$VENV"; }
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  'sglang-router==0.3.2' 'vllm-router==0.1.17' 'aiohttp>=3.9' 'matplotlib>=3.8'
cargo build --release --quiet --bins
exec "$VENV/bin/python" bench/routing.py "$@"
