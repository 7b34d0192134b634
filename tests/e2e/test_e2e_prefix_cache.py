"""An agent's next turn through each dialect: the shared prefix comes from the cache,
each dialect reports it in its own usage field, and the Prometheus counters agree."""

from __future__ import annotations

import uuid

import anthropic
import httpx
import ollama
import openai
from npu_proxy.testing import LiveServer
from prometheus_client.parser import text_string_to_metric_families

LLM = "smollm2:135m"
#: Whole blocks of the ledger (32 tokens) a 400-token system prompt surely fills.
AT_LEAST = 256


def system_prompt() -> str:
    """A long system prompt that no earlier test sent (the cache is shared)."""
    rules = " ".join(f"Rule {i}: answer in at most {i + 2} words." for i in range(40))
    return f"Session {uuid.uuid4().hex}. You are a terse assistant. {rules}"


def cached_total(server: LiveServer) -> tuple[float, float]:
    """``npu_proxy_prompt_tokens_cached_total`` and ``..._evaluated_total`` for the model."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    totals = {"cached": 0.0, "evaluated": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for kind in totals:
                if (sample.name == f"npu_proxy_prompt_tokens_{kind}_total"
                        and sample.labels.get("model") == LLM):
                    totals[kind] += sample.value
    return totals["cached"], totals["evaluated"]


def test_each_dialect_reports_the_prefix_it_read_from_the_cache(real_server: LiveServer) -> None:
    before = cached_total(real_server)
    reported = 0
    prompted = 0

    system = system_prompt()
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key="none", max_retries=0)

    def ask(question: str) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=LLM, temperature=0, max_tokens=8,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": question}])

    cold, warm = ask("What is rule 3?"), ask("What is rule 7?")
    for reply in (cold, warm):
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        reported += reply.usage.prompt_tokens_details.cached_tokens or 0
        prompted += reply.usage.prompt_tokens
    assert cold.usage is not None and warm.usage is not None
    assert warm.usage.prompt_tokens_details is not None
    cached = warm.usage.prompt_tokens_details.cached_tokens or 0
    assert AT_LEAST <= cached < warm.usage.prompt_tokens

    system = system_prompt()
    claude = anthropic.Anthropic(base_url=real_server.url, api_key="none", max_retries=0)
    for question in ("What is rule 3?", "What is rule 7?"):
        message = claude.messages.create(model=LLM, max_tokens=8, system=system,
                                         messages=[{"role": "user", "content": question}])
        counted = claude.messages.count_tokens(
            model=LLM, system=system, messages=[{"role": "user", "content": question}])
        usage = message.usage
        read = usage.cache_read_input_tokens or 0
        # The input fields add up to the whole prompt, as Anthropic's do.
        assert usage.input_tokens + read + (usage.cache_creation_input_tokens or 0) == (
            counted.input_tokens)
        reported += read
        prompted += counted.input_tokens
    assert read >= AT_LEAST

    system = system_prompt()
    local = ollama.Client(host=real_server.url)
    evaluated = []
    for question in ("What is rule 3?", "What is rule 7?"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        reply = local.chat(model=LLM, messages=messages,
                           options={"temperature": 0, "num_predict": 8})
        counted = claude.messages.count_tokens(
            model=LLM, system=system, messages=[{"role": "user", "content": question}])
        evaluated.append((reply.prompt_eval_count or 0, counted.input_tokens))
        reported += counted.input_tokens - (reply.prompt_eval_count or 0)
        prompted += counted.input_tokens
    (cold_eval, cold_all), (warm_eval, warm_all) = evaluated
    assert cold_eval == cold_all  # nothing of a new conversation was cached
    assert 0 < warm_eval <= warm_all - AT_LEAST  # Ollama counts only what was evaluated

    after = cached_total(real_server)
    assert after[0] - before[0] == reported
    assert after[1] - before[1] == prompted - reported
