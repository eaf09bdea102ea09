"""Time to first token of a streamed chat request, N times, against one URL (stdlib only).

    python3 bench/ttft.py http://127.0.0.1:8000 20

Prints the median and p90 of the time from sending the request to receiving the first SSE
event that carries generated text.
"""

import http.client
import json
import statistics
import sys
import time
import urllib.parse


def first_token_seconds(url: str) -> float:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps({"model": "mvllm/sim-model", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 3, "stream": True})
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = None
    for line in response:
        if first is None and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
            first = time.perf_counter() - started
    conn.close()
    if first is None:
        raise RuntimeError("no token received")
    return first


def main() -> None:
    url, n = sys.argv[1], int(sys.argv[2])
    samples = sorted(first_token_seconds(url) for _ in range(n))
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    print(f"{statistics.median(samples) * 1e3:.2f} {p90 * 1e3:.2f}")


if __name__ == "__main__":
    main()
