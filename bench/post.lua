-- wrk script: POST the JSON body in $BODY to the URL given to wrk. No response() callback:
-- with one, wrk hands every response to Lua, which costs the load generator CPU.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY")

-- Non-2xx answers (status >= 400 counts in summary.errors.status) and socket errors, so a
-- benchmark never reports errors as throughput; then one JSON line for scripts.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("non-200 answers: %d (socket errors: connect %d, read %d, write %d, timeout %d)\n",
    e.status, e.connect, e.read, e.write, e.timeout))
  io.write(string.format(
    'wrk-json: {"requests": %d, "duration_s": %.6f, "errors": %d, "p50_s": %.9f, "p90_s": %.9f, "p99_s": %.9f, "max_s": %.9f}\n',
    summary.requests, summary.duration / 1e6, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e6, latency:percentile(90) / 1e6, latency:percentile(99) / 1e6,
    latency.max / 1e6))
end
