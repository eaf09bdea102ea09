#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the OpenAI Python SDK tests.
# Installs what it needs first (cmake, a C compiler and tmux via apt-get, Python packages into
# .venv, and the Compose schema).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
ensure_test_tools
ensure_python_env
ensure_compose_schema

cargo build --locked --bins
cargo test --locked
MVLLM_BIN="$PWD/target/debug/mvllm" .venv/bin/python -m pytest -q tests/python
