"""The real OpenAI Python SDK through `mvllm run` in front of two simulated servers."""

import json
import os
import tempfile

import openai
import pytest

from conftest import Process


@pytest.fixture(scope="module")
def router():
    common = ["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1", "--embedding-dim", "8"]
    a = Process(common + ["--served-model-name", "llama"])
    b = Process(common + ["--served-model-name", "llama", "qwen"])
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write("[servers]\nservers = [\n")
        for p, cap in ((a, 4), (b, 8)):
            f.write(f'  {{ url = "{p.url}", max_concurrent_requests = {cap} }},\n')
        f.write("]\n[config]\nmetrics_interval = 0.2\n")
    r = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0", "--config", path],
                ready=lambda body: json.loads(body).get("healthy_servers") == 2)
    yield r
    for p in (r, a, b):
        p.stop()
    os.unlink(path)


@pytest.fixture
def client(router):
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)


def test_chat_and_stream(client):
    r = client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.model == "qwen"
    assert r.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 3


def test_completions_models_embeddings(client):
    r = client.completions.create(model="llama", prompt="Once", max_tokens=2)
    assert r.usage.completion_tokens == 2
    ids = sorted(m.id for m in client.models.list().data)
    assert ids == ["llama", "qwen"]
    e = client.embeddings.create(model="qwen", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8


def test_errors_surface_as_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="llama", prompt="x", max_tokens=10**6)
