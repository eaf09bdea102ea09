#!/usr/bin/env bash
# What one request costs the router, counted rather than timed: CPU instructions (valgrind's
# callgrind) and heap allocations (valgrind's dhat) per forwarded request. Counts repeat from
# run to run whatever else the machine does, so two builds can be compared exactly.
#
#   bash bench/request_cost.sh                          # this build (~2 minutes)
#   BASELINE=/tmp/mvllm-old bash bench/request_cost.sh  # and another build, side by side
#   FRONT_DOOR=0 bash bench/request_cost.sh  # without the client-key and https rows
#   REQUESTS="5 15" FRONT_DOOR=0 bash bench/request_cost.sh  # smoke test (CI)
#
# Method: the router (under valgrind) forwards N short chat requests, one at a time on one
# keep-alive connection, to a simulated server (not under valgrind); once with N=100 and once
# with N=600 (REQUESTS="100 600"). The difference divided by 500 is the cost of one request,
# with start-up and shutdown taken out. The access log is off (--no-access-log) unless ACCESS_LOG=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_tools
command -v valgrind >/dev/null || apt_install valgrind
build_for_bench
BIN=$MVLLM_BIN
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

"$BIN" sim --host 127.0.0.1 --port 0 --itl-ms 0 --prefill-us-per-token 0 >"$TMP/sim.out" 2>/dev/null &
PIDS+=("$!")
for _ in $(seq 100); do SIM=$(grep -o 'http://[0-9.:]*' "$TMP/sim.out" || true); [ -n "$SIM" ] && break; sleep 0.05; done
printf '[servers]\nservers = [{ url = "%s", max_concurrent_requests = 64 }]\n[config]\nmetrics_interval = 3600\nhealth_check_interval = 3600\n' "$SIM" > "$TMP/servers.toml"
read -r N1 N2 <<<"${REQUESTS:-100 600}"
LOG_FLAG=--no-access-log
[ "${ACCESS_LOG:-0}" = 1 ] && LOG_FLAG=

# cost BIN TOOL N: runs the router under valgrind TOOL, sends N requests, prints the total.
cost() {
  local bin=$1 tool=$2 n=$3 port out
  local flags=$LOG_FLAG
  # Builds from before the access log have neither it nor the flag.
  "$bin" run --help | grep -q -- --no-access-log || flags=
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out="$TMP/$tool.$n.out"
  valgrind --tool="$tool" --"$tool"-out-file="$TMP/$tool.$n.%p" --trace-children=no \
    "$bin" run --console $flags --host 127.0.0.1 --port "$port" --config "${CONFIG:-$TMP/servers.toml}" \
    >"$out" 2>"$TMP/$tool.$n.err" &
  local pid=$!
  python3 - "$port" "$n" "${AUTHZ:-}" <<'PY'
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
headers = {"Content-Type": "application/json"}
if sys.argv[3]:
    headers["Authorization"] = sys.argv[3]
deadline = time.time() + 120
while True:  # wait until it answers (valgrind starts slowly)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/health"); r = c.getresponse(); r.read()
        if r.status == 200: break
    except OSError:
        pass
    if time.time() > deadline: sys.exit("the router did not start")
    time.sleep(0.2)
body = json.dumps({"model": "mvllm/sim-model", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4})
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  case $tool in
    callgrind) grep -h '^summary:' "$TMP"/callgrind.$n.* | awk '{s += $2} END {print s}' ;;
    dhat) grep -ho 'Total:.*in [0-9,]* blocks' "$TMP/$tool.$n.err" | sed 's/.* in \([0-9,]*\) blocks/\1/; s/,//g' | awk '{s += $1} END {print s}' ;;
  esac
  rm -f "$TMP"/$tool.$n.*
}

report() {
  local name=$1 bin=$2
  local i100 i600 a100 a600
  i100=$(cost "$bin" callgrind "$N1"); i600=$(cost "$bin" callgrind "$N2")
  a100=$(cost "$bin" dhat "$N1"); a600=$(cost "$bin" dhat "$N2")
  python3 -c "import sys; n, k, i1, i2, a1, a2 = sys.argv[1], *map(int, sys.argv[2:]); print(f'  {n:<10} {(i2 - i1) / k:>10,.0f} instructions   {(a2 - a1) / k:>6.1f} allocations  per request')" "$name" "$((N2 - N1))" "$i100" "$i600" "$a100" "$a600"
}

echo "== cost of one forwarded request (router only; sim not counted)${ACCESS_LOG:+, access log on}"
report "this build" "$BIN"
if [ -n "${BASELINE:-}" ]; then report "baseline" "$BASELINE"; fi

# The front door's options, this build only: a client key with limits (the key compared,
# the limits checked, its Authorization dropped), and the server behind https:// (rustls
# over the pooled connection; the sim's own TLS is not counted).
if [ "${FRONT_DOOR:-1}" = 1 ]; then
  cp "$TMP/servers.toml" "$TMP/auth.toml"
  printf '[auth]\nkeys = [{ name = "bench", key = "sk-bench", requests_per_minute = 100000000, max_concurrent_requests = 1000, tokens_per_minute = 1099511627776 }]\n' >> "$TMP/auth.toml"
  CONFIG=$TMP/auth.toml AUTHZ="Bearer sk-bench" report "client key" "$BIN"
  (cd "$TMP" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca -keyout ca.key -out ca.pem \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout tls.key -out tls.csr 2>/dev/null &&
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf &&
    openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out tls.pem 2>/dev/null)
  "$BIN" sim --host 127.0.0.1 --port 0 --itl-ms 0 --prefill-us-per-token 0 \
    --ssl-certfile "$TMP/tls.pem" --ssl-keyfile "$TMP/tls.key" >"$TMP/tls-sim.out" 2>/dev/null &
  PIDS+=("$!")
  for _ in $(seq 100); do TLS_SIM=$(grep -o 'https://[0-9.:]*' "$TMP/tls-sim.out" || true); [ -n "$TLS_SIM" ] && break; sleep 0.05; done
  printf '[servers]\nservers = [{ url = "https://localhost:%s", max_concurrent_requests = 64, ca_file = "%s" }]\n[config]\nmetrics_interval = 3600\nhealth_check_interval = 3600\n' \
    "${TLS_SIM##*:}" "$TMP/ca.pem" > "$TMP/tls.toml"
  CONFIG=$TMP/tls.toml report "https server" "$BIN"
fi
