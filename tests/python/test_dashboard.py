"""deploy/grafana/mvllm.json and deploy/prometheus.yml: valid, and every metric the dashboard
queries exists in a live router's /metrics (after the traffic that makes each series appear:
answers, a retry after a server's 500 and its ejection, a config reload)."""

import json
import os
import pathlib
import re
import tempfile
import time
import urllib.request

import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import Process, ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "mvllm.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"


def queried_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard queries nothing"
    names = set()
    for expr in exprs:
        for name in re.findall(r"\bmvllm_[a-z0-9_]+", expr):
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return dashboard, names


def test_the_dashboard_and_the_scrape_config_are_well_formed():
    dashboard, names = queried_metrics()
    assert dashboard["uid"] and dashboard["title"] == "mvllm"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
    assert len(names) >= 15, names
    config = yaml.safe_load(PROMETHEUS.read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"]


def test_every_queried_metric_exists_in_a_live_router():
    _, names = queried_metrics()
    good = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1",
                    "--served-model-name", "llama"])
    broken = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1",
                      "--served-model-name", "llama", "--fault-error-rate", "1"])
    fd, path = tempfile.mkstemp(suffix=".toml")
    config = (f'[servers]\nservers = [{{ url = "{good.url}" }}, {{ url = "{broken.url}" }}]\n'
              "[config]\nmetrics_interval = 0.2\nconfig_reload_interval = 0.2\nfailure_threshold = 100\n"
              # the first failure ejects the broken server, so the ejection series exist
              "ejection_threshold = 1\n")
    with os.fdopen(fd, "w") as f:
        f.write(config)
    router = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0", "--config", path],
                     ready=lambda body: json.loads(body).get("healthy_servers") == 2)
    try:
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        pathlib.Path(path).write_text(config + "max_retries = 2\n")
        deadline = time.monotonic() + 10
        for _ in range(200):
            # Until one lands on the broken server first (ties are broken at random), is
            # retried and ejects it.
            client.chat.completions.create(model="llama", max_tokens=2,
                                           messages=[{"role": "user", "content": "Hi"}])
            with urllib.request.urlopen(router.url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            present = {f.name for f in text_string_to_metric_families(text)}
            # prometheus_client names counter families without their _total.
            present |= {n + "_total" for n in present}
            missing = names - present
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not missing, f"the dashboard queries metrics /metrics does not have: {sorted(missing)}"
    finally:
        for p in (router, good, broken):
            p.stop()
        os.unlink(path)
