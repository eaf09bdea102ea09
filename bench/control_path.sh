#!/usr/bin/env bash
# The control path at 1,000 servers (issue 9): scraping every server each second, memory per
# server, and what choosing among 1,000 servers adds to a request. See bench/control_path.py.
#
#   bash bench/control_path.sh            # 1,000 servers, ~3 min (with cargo bench policy_pick)
#   bash bench/control_path.sh --quick    # smoke test (CI), ~20 s
#   bash bench/control_path.sh --perf     # and a perf profile of each router under wrk
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_bench_tools
if [[ " $* " == *" --perf"* ]]; then command -v perf >/dev/null 2>&1 || apt_install linux-perf; fi
build_for_bench
exec "$BENCH_VENV/bin/python" bench/control_path.py "$@"
