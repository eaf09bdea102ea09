#!/usr/bin/env bash
# Build (installing cmake and a C compiler if missing) and start a simulated vLLM server on
# http://127.0.0.1:8000. Extra arguments go to `mvllm sim` (see `mvllm sim --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
cargo build --locked --release --bins
exec target/release/mvllm sim --port 8000 "$@"
