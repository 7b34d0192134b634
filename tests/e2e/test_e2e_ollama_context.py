"""``/api/generate``'s ``context`` round trip on the real CPU backend: the token ids of
the prompt and answer come back, and sent with the next prompt they put the earlier
exchange in front of it (SmolLM2's own template and tokenizer)."""

from __future__ import annotations

import httpx
from npu_proxy.testing import LiveServer


def test_context_round_trip_on_the_real_model(real_server: LiveServer) -> None:
    url = real_server.url + "/api/generate"
    options = {"num_predict": 8, "temperature": 0}
    alone = httpx.post(url, json={"model": "smollm2:135m", "prompt": "What is my name?",
                                  "stream": False, "options": options}, timeout=300)
    assert alone.status_code == 200, alone.text
    first = httpx.post(url, json={"model": "smollm2:135m", "prompt": "My name is Ada.",
                                  "stream": False, "options": options}, timeout=300).json()
    context = first["context"]
    assert isinstance(context, list) and all(isinstance(i, int) for i in context)
    # The prompt the model read (template applied) and the answer, in SmolLM2's tokens.
    assert len(context) >= first["prompt_eval_count"] - 1 + first["eval_count"] - 1
    second = httpx.post(url, json={"model": "smollm2:135m", "prompt": "What is my name?",
                                   "context": context, "stream": False, "options": options},
                        timeout=300)
    assert second.status_code == 200, second.text
    # The model read the earlier exchange, then the new prompt: its prompt is as long
    # as both (prompt_eval_count may count less: the earlier part can be a cached prefix).
    read = int(second.headers["X-NPU-Proxy-Token-Count"])
    assert read >= len(context) + int(alone.headers["X-NPU-Proxy-Token-Count"]) - 2
    assert second.json()["context"][: len(context) - 1] == context[: len(context) - 1]
