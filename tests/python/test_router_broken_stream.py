"""A stream the server breaks off, through the router, as the real OpenAI SDK sees it: an
`APIError` naming what happened, not a protocol error or a quiet truncation."""

import json
import os
import tempfile

import openai
import pytest

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
