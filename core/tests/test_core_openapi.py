"""``/openapi.json`` documents the request bodies routes validate (``request_body``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from core_test_plugins import SimBackend, tiny_plugins
from fastapi import APIRouter
from npu_proxy.api import ApiDialect
from npu_proxy.context import ServerContext
from npu_proxy.testing import LiveServer, inline_plugin, make_app, test_settings
from npu_proxy.web import read_json, request_body, validate
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse


class Part(BaseModel):
    text: str


class EchoBody(BaseModel):
    model: str
    parts: list[Part] = []


class EchoDialect(ApiDialect):
    name = "echo"
    prefixes = ("/echo",)

    def router(self, ctx: ServerContext) -> APIRouter:
        router = APIRouter()

        @router.post("/echo", openapi_extra=request_body(EchoBody))
        async def echo(request: Request) -> JSONResponse:
            body = validate(EchoBody, await read_json(request))
            return JSONResponse(body.model_dump())

        return router


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_request_bodies_are_documented_with_resolvable_schemas(tmp_path: Path) -> None:
    inline = {**tiny_plugins(SimBackend()), "echo": inline_plugin(
        npu_proxy_register_api=lambda register: register(EchoDialect()))}
    with LiveServer(make_app(test_settings(tmp_path), [], inline)) as server:
        document = httpx.get(server.url + "/openapi.json").json()
        assert httpx.post(server.url + "/echo", json={"model": "m"}).status_code == 200
    operation = document["paths"]["/echo"]["post"]
    assert "x-npu-proxy-schemas" not in operation  # hoisted into the components
    body = operation["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    # named after the defining package: this test module's top-level name
    prefix = __name__.split(".")[0].removeprefix("npu_proxy_")
    assert ref == f"#/components/schemas/{prefix}.EchoBody"
    schema = resolve(document, ref)
    assert schema["required"] == ["model"]
    item = schema["properties"]["parts"]["items"]["$ref"]
    assert resolve(document, item)["properties"]["text"]["type"] == "string"

