# Shared helpers for the project's scripts: install what is missing, nothing else.
# Sourced, not run.

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: need root to run: $*  (install it by hand, then run this again)" >&2
    return 1
  fi
}

_apt_updated=
apt_install() {
  if [ -z "$_apt_updated" ]; then
    as_root apt-get update -qq
    _apt_updated=1
  fi
  echo "installing with apt-get: $*" >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# A C compiler and cmake: Pingora's zlib-ng build needs both.
ensure_build_tools() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# tmux: the monitor's tests run mvllm in a real terminal and read its screen.
ensure_test_tools() {
  command -v tmux >/dev/null 2>&1 || apt_install tmux
}

# A virtualenv in .venv with the Python test packages (the real OpenAI SDK among them).
ensure_python_env() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; python3 -m venv .venv; }
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
}

# The Compose file schema, for checking docker-compose.yml without a container engine: the
# compose-spec JSON schema that the last Python docker-compose (1.29.2) ships, taken from its
# wheel (not installed: it only brings the file). Needs ensure_python_env first.
ensure_compose_schema() {
  local schema=.venv/compose_spec.json
  [ -s "$schema" ] && return 0
  local dir
  dir=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
    --dest "$dir" docker-compose==1.29.2
  .venv/bin/python - "$dir" "$schema" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/docker_compose-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("compose/config/compose_spec.json"))
PY
  rm -rf "$dir"
}

# The benchmarks' tools: nginx and wrk (apt), oha (crates.io; a fixed request rate with
# latency correction, which wrk cannot do), and bench/.venv with the peers from PyPI —
# sglang-router and vllm-router (Rust routers shipped in wheels) and the Python mvllm 0.1.0 —
# plus aiohttp (the routing benchmark's load) and matplotlib (the charts). Sets BENCH_VENV.
ensure_bench_tools() {
  ensure_build_tools
  command -v nginx >/dev/null 2>&1 || apt_install nginx
  command -v wrk >/dev/null 2>&1 || apt_install wrk
  command -v taskset >/dev/null 2>&1 || apt_install util-linux
  if ! command -v oha >/dev/null 2>&1; then
    echo "installing oha 1.16.0 with cargo install (a few minutes)" >&2
    cargo install --quiet --locked oha@1.16.0
  fi
  BENCH_VENV=bench/.venv
  if [ ! -x "$BENCH_VENV/bin/python" ]; then
    python3 -m venv "$BENCH_VENV" 2>/dev/null || { apt_install python3-venv; rm -rf "$BENCH_VENV"; python3 -m venv "$BENCH_VENV"; }
  fi
  "$BENCH_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'sglang-router==0.3.2' 'vllm-router==0.1.17' 'mvllm==0.1.0' 'aiohttp>=3.9' 'matplotlib>=3.8'
}

# The mvllm the benchmarks run: a release build, or with BENCH_PROFILE=debug (the CI smoke
# test, which has the debug build already) the debug one. Sets MVLLM_BIN and BENCH_CARGO_FLAGS.
build_for_bench() {
  if [ "${BENCH_PROFILE:-release}" = debug ]; then
    BENCH_CARGO_FLAGS=()
    export MVLLM_BIN=$PWD/target/debug/mvllm
  else
    BENCH_CARGO_FLAGS=(--release)
    export MVLLM_BIN=$PWD/target/release/mvllm
  fi
  cargo build "${BENCH_CARGO_FLAGS[@]}" --quiet --bins
}
