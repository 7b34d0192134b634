"""The OpenAI SDK against the real CPU backend and the embedded models (SmolLM2, MiniLM).

Skipped when the OpenVINO plugins are not installed. One server per module: the first
request converts and compiles the models, which takes a while.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest
from npu_proxy.settings import Settings
from npu_proxy.testing import LiveServer, make_app

pytest.importorskip("npu_proxy_openvino_cpu")

CHAT_MODEL = "smollm2:135m"
EMBED_MODEL = "all-minilm"
QUESTION = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    settings = Settings(
        model_path=tmp_path_factory.mktemp("openai-real"),
        real_inference=True,
        warmup=False,
        host="127.0.0.1",
        device="CPU",
    )
    app = make_app(settings, plugins=["openai", "openvino", "openvino-cpu"])
    with LiveServer(app) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)


def test_real_chat_whole_and_streamed_agree(real_client: openai.OpenAI) -> None:
    raw = real_client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=QUESTION, max_tokens=16, temperature=0
    )
    whole = raw.parse()
    assert raw.headers["x-npu-proxy-device"] == "CPU"
    text = whole.choices[0].message.content
    assert text and text.strip()
    assert whole.usage is not None
    assert whole.usage.prompt_tokens > 5
    assert 0 < whole.usage.completion_tokens <= 16
    assert raw.headers["x-npu-proxy-token-count"] == str(whole.usage.prompt_tokens)

    chunks = list(
        real_client.chat.completions.create(
            model=CHAT_MODEL,
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy decoding is deterministic
    assert chunks[-1].choices == []
    final = chunks[-1].usage
    assert final is not None
    assert (final.prompt_tokens, final.completion_tokens, final.total_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens)
    # The same prompt again: what the cache held of it is reported as cached.
    assert final.prompt_tokens_details is not None and whole.usage.prompt_tokens_details
    cached = final.prompt_tokens_details.cached_tokens or 0
    assert (whole.usage.prompt_tokens_details.cached_tokens or 0) <= cached < final.prompt_tokens


def test_real_text_completion(real_client: openai.OpenAI) -> None:
    reply = real_client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert reply.choices[0].text.strip()
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6 or reply.choices[0].finish_reason == "stop"


def test_real_embeddings_default_call(real_client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell."]
    default = real_client.embeddings.create(model=EMBED_MODEL, input=texts)
    floats = real_client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    vectors = [d.embedding for d in default.data]
    assert all(len(v) == 384 for v in vectors)
    for decoded, plain in zip(vectors, (d.embedding for d in floats.data), strict=True):
        assert all(
            math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
            for a, b in zip(decoded, plain, strict=True)
        )

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are normalised

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert default.usage.prompt_tokens > len(texts)


def test_real_logprobs_one_per_generated_token(real_client: openai.OpenAI) -> None:
    whole = real_client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True
    )
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert whole.usage is not None and len(entries) == whole.usage.completion_tokens
    assert all(e.logprob <= 0 for e in entries)
    assert any(e.logprob < 0 for e in entries)  # a real distribution, not a constant
    assert "".join(e.token for e in entries).strip() == (choice.message.content or "").strip()

    chunks = list(real_client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True,
        stream=True,
    ))
    streamed = [e.logprob for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content or ()]
    assert len(streamed) == len(entries)
    assert streamed == pytest.approx([e.logprob for e in entries], abs=1e-3)

    text = real_client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
        logprobs=0,
    )
    legacy = text.choices[0].logprobs
    assert legacy is not None and legacy.token_logprobs is not None
    assert text.usage is not None and len(legacy.token_logprobs) == text.usage.completion_tokens
    assert all(value <= 0 for value in legacy.token_logprobs)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        real_client.chat.completions.create(model=CHAT_MODEL, messages=QUESTION, max_tokens=4,
                                            logprobs=True, top_logprobs=2)
