"""The Responses API through clients other than openai-python: openai-node and Codex CLI.

Both come from the npm registry, which tests do not reach: they run where
``NPU_PROXY_TEST_NODE_MODULES`` names a ``node_modules`` folder holding them
(``npm install --prefix DIR openai@6 @openai/codex``, then
``NPU_PROXY_TEST_NODE_MODULES=DIR/node_modules``) and are skipped, saying so, elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from npu_proxy.testing import LiveServer
from npu_proxy_mock.backend import MockCounters

from .test_responses import ANSWER_SCHEMA, WEATHER


def _modules() -> Path:
    folder = os.environ.get("NPU_PROXY_TEST_NODE_MODULES", "")
    if not folder:
        pytest.skip("NPU_PROXY_TEST_NODE_MODULES is not set (see this module's docstring)")
    return Path(folder)


def _installed(package: str) -> Path:
    path = _modules() / package
    if not path.is_dir():
        pytest.skip(f"{package} is not installed in {path.parent}")
    return path


NODE_SCRIPT = """
const OpenAI = require("openai");
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "x", maxRetries: 0 });
const WEATHER = %(weather)s;
const SCHEMA = %(schema)s;
(async () => {
  const out = {};
  const whole = await client.responses.create({ model: "mock", input: "Say hello." });
  out.whole = { status: whole.status, text: whole.output_text, usage: whole.usage };
  const stream = client.responses.stream({ model: "mock", input: "Say hello." });
  out.types = [];
  let deltas = "";
  for await (const event of stream) {
    out.types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  out.streamed = { final: (await stream.finalResponse()).output_text, deltas };
  const asked = [{ role: "user", content: "Weather in Oslo?" }];
  const first = await client.responses.create({ model: "mock", input: asked, tools: [WEATHER] });
  const call = first.output[0];
  const second = await client.responses.create({
    model: "mock", tools: [WEATHER],
    input: [...asked, call,
            { type: "function_call_output", call_id: call.call_id, output: "Sunny" }],
  });
  out.call = call;
  out.answer = second.output.map((item) => item.type);
  const rated = await client.responses.create({
    model: "mock", input: "Rate this.",
    text: { format: { type: "json_schema", name: "rating", schema: SCHEMA, strict: true } },
  });
  out.rated = JSON.parse(rated.output_text);
  console.log(JSON.stringify(out));
})().catch((error) => { console.error(error); process.exit(1); });
"""


def test_openai_node(server: LiveServer, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    _installed("openai")
    script = tmp_path / "responses.js"
    script.write_text(
        NODE_SCRIPT % {"weather": json.dumps(WEATHER), "schema": json.dumps(ANSWER_SCHEMA)}
    )
    env = {**os.environ, "NODE_PATH": str(_modules()), "BASE_URL": server.url + "/v1"}
    done = subprocess.run(
        [node, str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["whole"]["status"] == "completed" and out["whole"]["text"]
    assert out["whole"]["usage"]["output_tokens"] > 0
    assert out["types"][0] == "response.created" and out["types"][-1] == "response.completed"
    assert out["streamed"]["final"] == out["streamed"]["deltas"] == out["whole"]["text"]
    assert out["call"]["type"] == "function_call" and out["call"]["name"] == "get_weather"
    assert json.loads(out["call"]["arguments"]) == {"city": "mock", "days": 42}
    assert out["answer"] == ["message"]
    assert out["rated"] == {"answer": "mock", "score": 42}


def test_codex_exec_completes_a_task(
    server: LiveServer, counters: MockCounters, tmp_path: Path
) -> None:
    codex = _installed(".bin") / "codex"
    if not codex.exists():
        pytest.skip(f"@openai/codex is not installed in {codex.parent.parent}")
    home = tmp_path / "codex-home"
    home.mkdir()
    # The provider entry docs/clients.md shows; hosted web search cannot run locally.
    (home / "config.toml").write_text(
        'model = "mock"\nmodel_provider = "npu-proxy"\nweb_search = "disabled"\n\n'
        "[model_providers.npu-proxy]\n"
        f'name = "npu-proxy"\nbase_url = "{server.url}/v1"\nwire_api = "responses"\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [str(codex), "exec", "--skip-git-repo-check", "--cd", str(work), "Say hello."],
        env={**os.environ, "CODEX_HOME": str(home)}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The mock's answer is words of its vocabulary; Codex prints the last message.
    assert done.stdout.strip(), done.stderr[-2000:]
    assert "ERROR" not in done.stderr, done.stderr[-2000:]
    assert counters.finished >= 1  # the answer came from the server's model
