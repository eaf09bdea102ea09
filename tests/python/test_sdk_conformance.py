"""OpenAI SDK conformance: the real `openai` SDK driving `mvllm run` over a cluster of
`mvllm sim` servers through everything the SDK offers that vLLM serves, and through every
error a client can meet, each surfacing as the SDK's own exception class."""

import asyncio
import json
import os
import tempfile
import time
import urllib.request

import httpx2 as httpx  # the HTTP client the openai SDK is built on (httpx2 since openai 3)
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Process

SIM = ["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1", "--embedding-dim", "8",
       "--max-model-len", "2048"]


def write_config(servers, extra=""):
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write("[servers]\nservers = [\n")
        for url in servers:
            f.write(f'  {{ url = "{url}", max_concurrent_requests = 64 }},\n')
        f.write("]\n[config]\nmetrics_interval = 0.2\n" + extra)
    return path


def start_router(servers, extra=""):
    path = write_config([s.url for s in servers], extra)
    router = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0", "--config", path],
                     ready=lambda body: json.loads(body).get("healthy_servers") == len(servers))
    return router, path


@pytest.fixture(scope="module")
def cluster():
    """Two servers; `org/qwen-2` (a name with a slash) is on the second only."""
    a = Process(SIM + ["--served-model-name", "llama"])
    b = Process(SIM + ["--served-model-name", "llama", "org/qwen-2"])
    router, path = start_router([a, b], "max_body_bytes = 262144\n")
    yield router
    for p in (router, a, b):
        p.stop()
    os.unlink(path)


@pytest.fixture(scope="module")
def faulty():
    """One server whose faults each test sets (/sim/faults), behind a router that neither
    ejects it nor marks it down, so every test meets the fault it set."""
    sim = Process(SIM + ["--served-model-name", "llama"])
    router, path = start_router([sim], "ejection_threshold = 0\nfailure_threshold = 100\n")
    yield router, sim
    for p in (router, sim):
        p.stop()
    os.unlink(path)


def set_faults(sim, faults):
    request = urllib.request.Request(sim.url + "/sim/faults", data=json.dumps(faults).encode(),
                                     method="PUT", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200


@pytest.fixture
def client(cluster):
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)


HI = [{"role": "user", "content": "Hello there"}]

WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}]


def test_chat_stream_and_not(client):
    r = client.chat.completions.create(model="llama", messages=HI, max_tokens=5)
    assert r.object == "chat.completion" and r.choices[0].message.content
    assert r.usage.completion_tokens == 5
    chunks = list(client.chat.completions.create(model="llama", messages=HI, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content, "the same prompt gives the same text, streamed or not"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_several_choices(client):
    r = client.chat.completions.create(model="llama", messages=HI, max_tokens=3, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 9
    finished = {}
    for chunk in client.chat.completions.create(model="llama", messages=HI, max_tokens=3, n=2, stream=True):
        for choice in chunk.choices:
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"}


def test_tool_calls_pass_through_both_ways(client):
    r = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=WEATHER,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=8)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    # The next turn carries the call and its result back: the server accepts it.
    follow = client.chat.completions.create(model="llama", max_tokens=4, tools=WEATHER, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ])
    assert follow.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="llama", messages=HI, tools=WEATHER,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_logprobs(client):
    r = client.chat.completions.create(model="llama", messages=HI, max_tokens=4, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 2 and token.top_logprobs[0].token == token.token
        assert token.logprob <= 0 and token.top_logprobs[1].logprob < token.logprob
    streamed = [c for c in client.chat.completions.create(model="llama", messages=HI, max_tokens=4, logprobs=True,
                                                          stream=True) if c.choices and c.choices[0].logprobs]
    assert len(streamed) == 4
    c = client.completions.create(model="llama", prompt="Once", max_tokens=3, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == 3 and len(c.choices[0].logprobs.top_logprobs[0]) == 2
    assert "".join(c.choices[0].logprobs.tokens) == c.choices[0].text


def test_completions_and_embeddings(client):
    r = client.completions.create(model="llama", prompt=["Once", "Twice"], max_tokens=2)
    assert len(r.choices) == 2 and r.usage.completion_tokens == 4
    pieces = list(client.completions.create(model="llama", prompt="Once", max_tokens=3, stream=True))
    assert pieces[-1].choices[0].finish_reason == "length"
    e = client.embeddings.create(model="org/qwen-2", input=["a", "b"])  # base64, decoded by the SDK
    f = client.embeddings.create(model="org/qwen-2", input=["a", "b"], encoding_format="float")
    assert len(e.data) == 2 and e.data[1].embedding == pytest.approx(f.data[1].embedding, abs=1e-6)


def test_models_list_and_retrieve(client):
    assert sorted(m.id for m in client.models.list().data) == ["llama", "org/qwen-2"]
    assert client.models.retrieve("llama").id == "llama"
    assert client.models.retrieve("org/qwen-2").id == "org/qwen-2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_responses_api(client):
    r = client.responses.create(model="llama", input="Say hello", instructions="Be brief", max_output_tokens=5)
    assert r.object == "response" and r.output_text
    assert r.usage.output_tokens == 5 and r.usage.total_tokens == r.usage.input_tokens + 5
    r = client.responses.create(model="org/qwen-2", input=[{"role": "user", "content": "Hi"}])
    assert r.status == "completed" and r.output_text


def completion_tokens(router):
    with urllib.request.urlopen(router.url + "/metrics", timeout=5) as r:
        families = text_string_to_metric_families(r.read().decode())
        return sum(s.value for f in families if f.name == "mvllm_completion_tokens"
                   for s in f.samples if s.name == "mvllm_completion_tokens_total")


def test_responses_api_streamed(cluster, client):
    before = completion_tokens(cluster)
    events = list(client.responses.create(model="llama", input="Stream it", max_output_tokens=6, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == 6
    assert kinds[-1] == "response.incomplete", "cut by max_output_tokens"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 6
    # The router read the token counts of the Responses API's own names as the stream passed
    # (recorded as the request ends, which may be just after the client read the last event).
    deadline = time.monotonic() + 5
    while completion_tokens(cluster) != before + 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert completion_tokens(cluster) == before + 6


def test_raw_response_headers_carry_the_request_id(client):
    raw = client.chat.completions.with_raw_response.create(model="llama", messages=HI, max_tokens=2)
    assert raw.headers.get("x-request-id")
    assert raw.parse().choices[0].message.content
    mine = client.chat.completions.with_raw_response.create(
        model="llama", messages=HI, max_tokens=2, extra_headers={"X-Request-Id": "conformance-1"})
    assert mine.headers["x-request-id"] == "conformance-1"
    assert mine.parse().id.endswith("conformance-1"), "vLLM names the completion by the request id"


def test_error_classes(cluster, faulty):
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="llama", prompt="x", max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x" * 300_000}])
    assert e.value.status_code == 413

    router, sim = faulty
    bad = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    expected = {401: openai.AuthenticationError, 429: openai.RateLimitError,
                500: openai.InternalServerError, 503: openai.InternalServerError}
    try:
        for status, error in expected.items():
            set_faults(sim, {"error_rate": 1.0, "error_status": status, "retry_after": 1})
            with pytest.raises(error) as e:
                bad.chat.completions.create(model="llama", messages=HI, max_tokens=2)
            assert e.value.status_code == status
            assert e.value.body is not None, "an OpenAI-shaped error body"
    finally:
        set_faults(sim, {})


def test_sdk_retries_honour_retry_after(faulty):
    router, sim = faulty
    sent = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(time.monotonic())]})
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=2, http_client=http)
    set_faults(sim, {"error_rate": 1.0, "error_status": 429, "retry_after": 1})
    try:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="llama", messages=HI, max_tokens=2)
        assert len(sent) == 3, "the first try and two retries"
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        assert all(g >= 0.9 for g in gaps), f"the SDK waited as Retry-After said: {gaps}"
        # A 503 (vLLM's "engine busy") is retried by the SDK too, with its own backoff.
        set_faults(sim, {"error_rate": 1.0, "error_status": 503})
        sent.clear()
        with pytest.raises(openai.InternalServerError) as e:
            client.with_options(max_retries=1).chat.completions.create(model="llama", messages=HI, max_tokens=2)
        assert e.value.status_code == 503 and len(sent) == 2
    finally:
        set_faults(sim, {})


def test_client_timeout(faulty):
    router, sim = faulty
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=0.3)
    set_faults(sim, {"delay_ms": 3000})
    try:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="llama", messages=HI, max_tokens=2)
    finally:
        set_faults(sim, {})
    # The router is not hurt by the client leaving: the next request is served.
    fine = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    assert fine.chat.completions.create(model="llama", messages=HI, max_tokens=2).choices


def test_200_concurrent_async_streams(cluster):
    async def main():
        client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)
        prompts = [[{"role": "user", "content": f"Tell me about number {i}"}] for i in range(200)]
        expected = [
            (await client.chat.completions.create(model="llama", messages=p, max_tokens=12)).choices[0].message.content
            for p in prompts[:10]
        ]

        async def one(messages):
            stream = await client.chat.completions.create(
                model="llama", messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True})
            chunks = [c async for c in stream]
            return chunks

        results = await asyncio.gather(*(one(p) for p in prompts))
        await client.close()
        return expected, results

    expected, results = asyncio.run(main())
    assert len(results) == 200
    for i, chunks in enumerate(results):
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "length" and all(f is None for f in finishes[:-1]), f"stream {i}"
        assert chunks[-1].usage.completion_tokens == 12, f"stream {i} is complete"
        if i < len(expected):
            assert text == expected[i], f"stream {i}'s tokens arrived in order"
