"""The real OpenAI Python SDK against `mvllm sim`."""

import openai
import pytest


@pytest.fixture
def client(sim):
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
    )
    assert r.object == "chat.completion"
    assert r.model == "sim-model"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5


def test_completion_and_stream(client):
    r = client.completions.create(model="sim-model", prompt="Once upon", max_tokens=4)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.usage.completion_tokens == 4
    pieces = list(client.completions.create(model="sim-model", prompt="Once", max_tokens=3, stream=True))
    assert len(pieces) == 3
    assert pieces[-1].choices[0].finish_reason == "length"


def test_models_list(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["sim-model"]
    assert models.data[0].owned_by == "vllm"


def test_embeddings_default_base64_and_float(client):
    # The SDK asks for base64 by default and decodes it.
    r = client.embeddings.create(model="sim-model", input=["a", "b"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 16
    f = client.embeddings.create(model="sim-model", input="a", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    assert "nope" in e.value.message


def test_too_long_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="sim-model", prompt="word " * 500, max_tokens=100)
    assert e.value.status_code == 400
    assert "maximum context length" in e.value.message


def test_wrong_key_is_authentication_error(sim):
    bad = openai.OpenAI(base_url=sim.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
