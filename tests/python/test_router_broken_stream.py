"""A stream the server breaks off, through the router, as the real OpenAI SDK sees it: an
`APIError` naming what happened, not a protocol error or a quiet truncation."""

import json
import os
import tempfile

import openai
import pytest
import urllib.request

from conftest import Process


@pytest.fixture(scope="module")
def router():
    sim = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1",
                   "--served-model-name", "llama", "--fault-cut-stream-after", "2"])
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(f'[servers]\nservers = [{{ url = "{sim.url}" }}]\n[config]\nmetrics_interval = 0.2\n')
    r = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0", "--config", path],
                ready=lambda body: json.loads(body).get("healthy_servers") == 1)
    yield r
    for p in (r, sim):
        p.stop()
    os.unlink(path)


def test_a_broken_stream_raises_an_api_error(router):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="llama", stream=True, max_tokens=20,
                                            messages=[{"role": "user", "content": "Hi"}])
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)
    assert "broke off" in str(raised.value)
    assert received, "the chunks before the break were delivered"


@pytest.fixture(scope="module")
def resuming_router():
    cut = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1",
                   "--served-model-name", "llama", "--fault-cut-stream-after", "2"])
    good = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1",
                    "--served-model-name", "llama"])
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(f'[servers]\nservers = [{{ url = "{cut.url}" }}, {{ url = "{good.url}" }}]\n'
                "[config]\nmetrics_interval = 0.2\nresume_streams = true\n"
                "failure_threshold = 100\nejection_threshold = 0\n")
    r = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0", "--config", path],
                ready=lambda body: json.loads(body).get("healthy_servers") == 2)
    yield r
    for p in (r, cut, good):
        p.stop()
    os.unlink(path)


def test_with_resume_streams_the_sdk_sees_one_uninterrupted_stream(resuming_router):
    client = openai.OpenAI(base_url=resuming_router.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(20):  # ties are broken at random: many start on the server that dies
        stream = client.chat.completions.create(model="llama", stream=True, max_tokens=10,
                                                messages=[{"role": "user", "content": "Hi"}])
        chunks = list(stream)  # no exception: the stream was not interrupted
        assert len({c.id for c in chunks}) == 1
        tokens = [c for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(tokens) == 10
        assert chunks[-1].choices[0].finish_reason == "length"
    with urllib.request.urlopen(resuming_router.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    resumed = sum(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("mvllm_streams_resumed_total"))
    assert resumed >= 1
