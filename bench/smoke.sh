#!/usr/bin/env bash
# Every benchmark script in its quick mode, as CI's smoke test: each runs end to end (installs
# its tools, starts its processes, writes its report) in seconds, on the debug build CI has
# already made. Nothing is asserted on timings; a script fails if it could not run, or if
# requests failed or streams were lost.
#
#   bash bench/smoke.sh            # ~5 minutes, most of it installing oha the first time
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_PROFILE=${BENCH_PROFILE:-debug}
step() { echo; echo "== bench smoke: $*"; }
step proxy_overhead; bash bench/proxy_overhead.sh --quick
step stream_scale; bash bench/stream_scale.sh --quick
step control_path; bash bench/control_path.sh --quick
step routing; bash bench/routing.sh --quick
step router_overhead; DURATION=1 bash bench/router_overhead.sh
step sim_capacity; DURATION=2 bash bench/sim_capacity.sh
step request_cost; REQUESTS="5 15" FRONT_DOOR=0 bash bench/request_cost.sh
