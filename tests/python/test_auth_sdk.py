"""Client keys as the real OpenAI SDK meets them: a missing or wrong key is the SDK's
AuthenticationError, a key over its limit is RateLimitError, and the SDK's own retry honours
the router's Retry-After and gets through; a key limited to some models lists only those."""

import os
import time

import openai
import pytest

from test_sdk_conformance import SIM, start_router
from conftest import Process

AUTH = """
[auth]
keys = [
  { name = "app", key = "sk-app", models = ["llama"] },
  { name = "burst", key = "sk-burst", requests_per_minute = 6 },
]
"""

HI = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def router():
    sim = Process(SIM + ["--served-model-name", "llama", "qwen"])
    router, path = start_router([sim], AUTH)
    yield router
    for p in (router, sim):
        p.stop()
    os.unlink(path)


def sdk(router, key, retries=0):
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=retries)


def test_a_wrong_key_is_an_authentication_error(router):
    # (The SDK itself refuses to send no key; tests/auth.rs sends none.)
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(router, "sk-wrong").chat.completions.create(model="llama", messages=HI, max_tokens=2)
    assert caught.value.status_code == 401
    assert "API key" in caught.value.message
    assert "sk-wrong" not in caught.value.message


def test_a_key_sees_and_uses_only_its_models(router):
    client = sdk(router, "sk-app")
    assert [m.id for m in client.models.list()] == ["llama"]
    r = client.chat.completions.create(model="llama", messages=HI, max_tokens=2)
    assert r.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="qwen", messages=HI, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("qwen")


def test_over_the_rate_the_sdk_waits_as_told_and_gets_through(router):
    # 6 a minute, a minute's worth at once: spend them, then meet the limit (one more
    # request in 10 s).
    client = sdk(router, "sk-burst")
    for _ in range(7):
        try:
            client.chat.completions.create(model="qwen", messages=HI, max_tokens=1)
        except openai.RateLimitError as e:
            assert e.status_code == 429
            retry_after = int(e.response.headers["retry-after"])
            assert 8 <= retry_after <= 10, retry_after
            break
    else:
        pytest.fail("7 requests never met requests_per_minute = 6")
    # The SDK's own retries read Retry-After: it waits, then gets through.
    started = time.monotonic()
    r = sdk(router, "sk-burst", retries=2).chat.completions.create(model="qwen", messages=HI, max_tokens=1)
    assert r.choices[0].message.content
    assert time.monotonic() - started >= 5, "it got through without waiting"
