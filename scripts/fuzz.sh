#!/usr/bin/env bash
# Fuzzing: every target in fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each, 60 by default (CI's
# smoke run); `bash scripts/fuzz.sh 1800` for a long run. Each target starts from its seeds
# (fuzz/seeds/<target>, committed) and what earlier runs found (fuzz/corpus/<target>, not
# committed). A crash stops the run and leaves its input in fuzz/artifacts/<target>/.
#
# Toolchain: cargo fuzz needs nightly-only compiler flags, and CI machines can fetch no other
# toolchain than the one they have, so the stable compiler is told to accept them
# (RUSTC_BOOTSTRAP=1). AddressSanitizer is on when the toolchain ships its runtime (stable
# rustup toolchains do), else the targets run without a sanitizer: what they look for in safe
# Rust is panics, which need none.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
command -v c++ >/dev/null 2>&1 || apt_install g++   # libFuzzer is C++
EACH=${1:-60}

CARGO_FUZZ_VERSION=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
SANITIZER=address
if ! ls "$(rustc --print sysroot)"/lib/rustlib/*/lib/librustc-*_rt.asan.a >/dev/null 2>&1; then
  echo "fuzz: no AddressSanitizer runtime in this toolchain; running without a sanitizer" >&2
  SANITIZER=none
fi

LOGS=target/fuzz-logs
mkdir -p "$LOGS"
cargo fuzz build -O -s "$SANITIZER"
for target in $(cargo fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  echo "== $target: $EACH s (sanitizer: $SANITIZER)"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak or a blow-up.
  if ! cargo fuzz run -O -s "$SANITIZER" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$LOGS/$target.log" 2>&1; then
    tail -n 40 "$LOGS/$target.log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  # The last status line (executions, coverage, corpus) and the final stats.
  grep -E "^#[0-9]+" "$LOGS/$target.log" | tail -n 1
  grep -E "stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" "$LOGS/$target.log"
done
