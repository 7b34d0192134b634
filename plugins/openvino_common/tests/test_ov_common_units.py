"""Pure logic of the shared package: tool-call parsing, option mapping, files, plugins."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import openvino_genai
import pytest
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.engine.formats import ModelFormat
from npu_proxy.engine.types import Capability, ModelInfo, ResponseFormat, SamplingOptions
from npu_proxy.settings import Settings
from npu_proxy_openvino import OpenVINOSettings, plugin
from npu_proxy_openvino.batching_worker import scheduler_config
from npu_proxy_openvino.chat import ToolCallFilter, parse_tool_calls
from npu_proxy_openvino.files import DigestCache
from npu_proxy_openvino.formats import GGUFFormat
from npu_proxy_openvino.options import apply_options, response_schema, validate_options
from npu_proxy_openvino.settings import kv_cache_budget_gb
from npu_proxy_openvino.stops import StopStringFilter

KNOWN = {"get_weather"}


def test_parses_hermes_tool_calls() -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    text = f"Sure.\n<tool_call>\n{call}\n</tool_call>"
    rest, calls = parse_tool_calls(text, KNOWN)
    assert rest == "Sure."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Oslo"})]
    assert calls[0].id.startswith("call_")


def test_parses_plain_json_and_wrapped_calls() -> None:
    _, plain = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Rome"}}', KNOWN)
    assert plain[0].arguments == {"city": "Rome"}
    # Arguments as a JSON string (OpenAI style), inside a Markdown fence.
    body = json.dumps({"tool_calls": [{"name": "get_weather", "id": "c1",
                                       "arguments": json.dumps({"city": "Lima"})}]})
    wrapped = f"```json\n{body}\n```"
    _, calls = parse_tool_calls(wrapped, KNOWN)
    assert (calls[0].id, calls[0].arguments) == ("c1", {"city": "Lima"})


def test_unknown_function_or_prose_is_text() -> None:
    text = '{"name": "launch_rocket", "arguments": {}}'
    assert parse_tool_calls(text, KNOWN) == (text, [])
    assert parse_tool_calls("Just an answer.", KNOWN) == ("Just an answer.", [])
    assert parse_tool_calls('{"answer": 42}', KNOWN) == ('{"answer": 42}', [])


def test_filter_streams_prose_and_holds_calls() -> None:
    prose = ToolCallFilter(KNOWN)
    assert prose.feed("Hello") == "Hello"
    assert prose.feed(" there <tool") == " there "
    assert prose.feed("_call>{\"name\": \"get_weather\", \"arguments\": {}}") == ""
    rest, calls = prose.finish()
    assert rest == "" and calls[0].name == "get_weather"
    held = ToolCallFilter(KNOWN)
    assert held.feed('{"answer":') == ""
    assert held.feed(" 42}") == ""
    assert held.finish() == ('{"answer": 42}', [])  # released, never lost


def fresh_config() -> openvino_genai.GenerationConfig:
    return openvino_genai.GenerationConfig()


def test_every_sampling_option_is_applied() -> None:
    options = SamplingOptions(
        max_tokens=7, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=11,
        repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.25,
        stop=("END", "\n\n"),
    )
    config = apply_options(fresh_config(), options, max_new_tokens=7)
    assert config.max_new_tokens == 7
    assert config.do_sample and config.temperature == pytest.approx(0.7)
    assert config.top_p == pytest.approx(0.9) and config.top_k == 40
    assert config.min_p == pytest.approx(0.05) and config.rng_seed == 11
    assert config.repetition_penalty == pytest.approx(1.1)
    assert config.presence_penalty == pytest.approx(0.5)
    assert config.frequency_penalty == pytest.approx(0.25)
    assert config.stop_strings == {"END", "\n\n"}
    assert not config.apply_chat_template  # the prompt is rendered once, by us


def test_temperature_zero_is_greedy_and_none_keeps_the_default() -> None:
    greedy = apply_options(fresh_config(), SamplingOptions(temperature=0, top_k=0),
                           max_new_tokens=3)
    assert not greedy.do_sample
    assert greedy.top_k == fresh_config().top_k  # top_k 0 means "off"
    default = apply_options(fresh_config(), SamplingOptions(), max_new_tokens=3)
    assert default.do_sample == fresh_config().do_sample


def test_structured_output_is_configured() -> None:
    schema = response_schema(ResponseFormat(kind="json_schema", schema={"type": "object"}))
    config = apply_options(fresh_config(), SamplingOptions(), max_new_tokens=3,
                           structured_schema=schema)
    assert config.structured_output_config is not None
    assert response_schema(ResponseFormat(kind="json")) == {"type": "object"}
    assert response_schema(None) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1.0), ("top_p", 0.0), ("max_tokens", 0), ("min_p", 2.0),
     ("repetition_penalty", 0.0), ("presence_penalty", 3.0)],
)
def test_out_of_range_options_are_refused(field: str, value: float) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_options(SamplingOptions(**{field: value}))
    assert caught.value.param == field


def test_digest_is_cached_by_path_mtime_and_size(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"abc")
    cache = DigestCache(tmp_path / "cache" / "digests.json")
    expected = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert cache.digest(target) == expected
    # A cached entry is trusted: prove it by planting a different value for the key.
    (tmp_path / "cache" / "digests.json").write_text(
        (tmp_path / "cache" / "digests.json").read_text().replace(expected, "sha256:cached")
    )
    assert cache.digest(target) == "sha256:cached"
    target.write_bytes(b"abcd")  # new size and mtime: recomputed
    os.utime(target, ns=(1, 1))
    assert cache.digest(target) == "sha256:" + hashlib.sha256(b"abcd").hexdigest()


def test_embedded_models_are_registered(tmp_path: Path) -> None:
    registered: list[ModelInfo] = []
    plugin.npu_proxy_register_models(registered.append, Settings(model_path=tmp_path))
    models = {model.name: model for model in registered}
    llm, embed = models["smollm2:135m"], models["all-minilm:latest"]
    assert llm.format == "gguf" and llm.family == "llama"
    assert llm.quantization_level == "Q4_1" and llm.parameter_size == "135M"
    assert llm.context_length == 8192 and llm.size == 98_362_432
    assert llm.capabilities == frozenset({Capability.COMPLETION})
    assert "<|im_start|>" in llm.template
    assert embed.capabilities == frozenset({Capability.EMBEDDING})
    assert embed.embedding_length == 384 and embed.context_length == 256
    # The ONNX package pins its sha256; ours must agree.
    assert embed.digest == "sha256:8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
    assert all(model.builtin for model in registered)


def test_entry_points_are_declared() -> None:
    group = importlib.metadata.entry_points(group="npu_proxy.backends")
    names = {ep.name: ep.value for ep in group}
    assert names["openvino"] == "npu_proxy_openvino.plugin"
    assert names["openvino-cpu"] == "npu_proxy_openvino_cpu.plugin"
    assert names["openvino-gpu"] == "npu_proxy_openvino_gpu.plugin"
    assert names["openvino-npu"] == "npu_proxy_openvino_npu.plugin"


def test_device_plugins_register_their_backends(tmp_path: Path) -> None:
    from npu_proxy_openvino_cpu import plugin as cpu
    from npu_proxy_openvino_gpu import plugin as gpu
    from npu_proxy_openvino_npu import plugin as npu

    settings = Settings(model_path=tmp_path, max_parallel=6)
    found = []
    for module in (cpu, gpu, npu):
        module.npu_proxy_register_backends(found.append, settings)
    # CPU and GPU batch NPU_PROXY_MAX_PARALLEL streams; the NPU serves one.
    assert [(b.name, b.device, b.max_parallel, b.max_loaded_models) for b in found] == [
        ("openvino-cpu", "CPU", 6, None),
        ("openvino-gpu", "GPU", 6, None),
        ("openvino-npu", "NPU", 1, 1),
    ]
    # What GenAI's GGUF reader builds (gguf_modeling.cpp); the GGUF format the plugin
    # registers refuses to pull the rest.
    formats: list[ModelFormat] = []
    plugin.npu_proxy_register_model_formats(formats.append)
    assert [f.name for f in formats] == ["ir", "onnx", "gguf"]
    assert isinstance(formats[2], GGUFFormat)
    assert formats[2].architectures == frozenset({"llama", "qwen2", "qwen3"})


def test_stop_filter_cuts_at_the_earliest_stop_across_pieces() -> None:
    stops = StopStringFilter(("END", "\n\n"))
    out = [stops.feed(piece) for piece in ("Hello wor", "ld E", "N", "Dx", "more")]
    assert "".join(out) == "Hello world " and stops.hit == "END"
    assert out[1] == "ld "  # "E" held back: it may begin "END"
    assert stops.finish() == ""
    tie = StopStringFilter(("ab", "abc"))
    assert tie.feed("xabcd") == "x" and tie.hit == "abc"


def test_stop_filter_releases_a_near_miss() -> None:
    stops = StopStringFilter(("END",))
    assert stops.feed("the EN") == "the "
    assert stops.feed("D") == "" and stops.hit == "END"
    miss = StopStringFilter(("END",))
    assert miss.feed("the EN") == "the "
    assert miss.feed("ding") == "ENding"
    assert miss.feed(" E") == " " and miss.finish() == "E" and miss.hit is None


def test_every_openvino_variable_is_documented_with_its_owners() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in docs.splitlines()
            if line.startswith("| `NPU_PROXY_")}
    for name in OpenVINOSettings.model_fields:
        owners = rows[f"`NPU_PROXY_{name.upper()}`"].split("|")[2]
        assert "openvino-cpu" in owners or "openvino-gpu" in owners, name


@pytest.mark.parametrize(("memory_gb", "budget"), [(None, 2), (4, 1), (23, 2), (32, 4), (256, 8)])
def test_unset_kv_cache_budget_is_sized_from_the_device_memory(
    memory_gb: int | None, budget: int
) -> None:
    memory = None if memory_gb is None else memory_gb << 30
    assert kv_cache_budget_gb(OpenVINOSettings(), memory) == budget


@pytest.mark.parametrize("setting", [0, 3])
def test_a_set_kv_cache_budget_wins(setting: int) -> None:
    assert kv_cache_budget_gb(OpenVINOSettings(kv_cache_gb=setting), 256 << 30) == setting


def test_prefix_caching_is_on_by_default_and_reaches_the_scheduler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NPU_PROXY_PREFIX_CACHING", raising=False)
    assert OpenVINOSettings().prefix_caching
    monkeypatch.setenv("NPU_PROXY_PREFIX_CACHING", "0")
    assert not OpenVINOSettings().prefix_caching
    assert scheduler_config(4, 2, True).enable_prefix_caching
    off = scheduler_config(4, 2, False)
    assert not off.enable_prefix_caching and off.cache_size == 2 and off.max_num_seqs == 4
