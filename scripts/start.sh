#!/usr/bin/env bash
# Build (installing cmake and a C compiler if missing) and start `mvllm demo`: the router on
# http://127.0.0.1:8888 in front of three simulated vLLM servers. Extra arguments go to
# `mvllm demo` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
cargo build --locked --release --bins
exec target/release/mvllm demo "$@"
