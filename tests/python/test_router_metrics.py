"""The router's `/metrics`, read by Prometheus' own Python text parser (`prometheus_client`):
it parses, it names every family the README documents, and its counters move with traffic and
config reloads."""

import json
import os
import tempfile
import time
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Process


def servers_toml(urls, extra=""):
    lines = ["[servers]", "servers = ["]
    lines += [f'  {{ url = "{u}", max_concurrent_requests = 4 }},' for u in urls]
    lines += ["]", "[config]", "metrics_interval = 0.2", "config_reload_interval = 0.2", extra]
    return "\n".join(lines) + "\n"


def save_like_an_editor(path, text):
    with open(path + ".swp", "w") as f:
        f.write(text)
    os.replace(path + ".swp", path)


@pytest.fixture(scope="module")
def setup():
    sim = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1",
                   "--served-model-name", "llama"])
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(servers_toml([sim.url]))
    router = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0", "--config", path],
                     ready=lambda body: json.loads(body).get("healthy_servers") == 1)
    yield router, sim, path
    for p in (router, sim):
        p.stop()
    os.unlink(path)


def scrape(router):
    """{(name, frozenset(labels)): value} for every sample of /metrics."""
    with urllib.request.urlopen(router.url + "/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and want <= l)


def eventually(check, what, limit=10):
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_metrics_parse_and_move_with_traffic(setup):
    router, sim, _ = setup
    before = scrape(router)
    assert total(before, "mvllm_build_info") == 1
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(3):
        r = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4)
        assert r.usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])

    def all_counted():
        # A request is recorded just after its answer went out.
        samples = scrape(router)
        new = total(samples, "mvllm_requests_total") - total(before, "mvllm_requests_total")
        return samples if new >= 4 else None

    after = eventually(all_counted, "the requests were never counted")
    ok = dict(server=sim.url, model="llama", outcome="ok", status_class="2xx")
    assert total(after, "mvllm_requests_total", **ok) - total(before, "mvllm_requests_total", **ok) == 3
    rejected = dict(server="none", model="unlisted", outcome="rejected", status_class="4xx")
    assert total(after, "mvllm_requests_total", **rejected) == 1
    assert total(after, "mvllm_completion_tokens_total", server=sim.url) >= 12
    assert total(after, "mvllm_time_to_first_token_seconds_count", server=sim.url) >= 3
    assert total(after, "mvllm_request_duration_seconds_count", server=sim.url) >= 3
    assert total(after, "mvllm_attempts_total", server=sim.url) >= 3
    assert total(after, "mvllm_upstream_header_seconds_count", server=sim.url) >= 3
    assert total(after, "mvllm_router_added_seconds_count", server=sim.url) >= 3
    assert total(after, "mvllm_server_healthy", server=sim.url) == 1
    assert total(after, "mvllm_server_capacity", server=sim.url) == 4
    assert total(after, "mvllm_scrape_duration_seconds_count", server=sim.url, endpoint="metrics") >= 1
    assert total(after, "mvllm_local_requests_total", route="metrics") >= 1
    # The poller keeps scraping: its count grows.
    eventually(lambda: total(scrape(router), "mvllm_scrape_duration_seconds_count", endpoint="metrics")
               > total(after, "mvllm_scrape_duration_seconds_count", endpoint="metrics"),
               "the scrape count never grew")


def test_config_reloads_are_counted(setup):
    router, sim, path = setup
    before = scrape(router)
    save_like_an_editor(path, servers_toml([sim.url], "max_retries = 2"))
    eventually(lambda: total(scrape(router), "mvllm_config_reloads_total", result="ok")
               > total(before, "mvllm_config_reloads_total", result="ok"),
               "the good edit was never counted")
    save_like_an_editor(path, servers_toml([sim.url], "max_retries = -1"))
    eventually(lambda: total(scrape(router), "mvllm_config_reloads_total", result="failed")
               > total(before, "mvllm_config_reloads_total", result="failed"),
               "the bad edit was never counted")
