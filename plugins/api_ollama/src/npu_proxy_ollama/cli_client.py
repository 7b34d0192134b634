"""The Ollama API of a running npu-proxy server, as the ``npu-proxy`` model commands use it.

Errors arrive as :class:`ServerError` (a :class:`click.ClickException`: one ``Error: ...``
line and exit status 1). This module imports httpx; the commands import it only when
they run, so registering them costs nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click
import httpx

#: Requests that answer at once; streamed ones (pull, run, create) have no read timeout,
#: since a cold NPU compile or a large download can take minutes between lines.
_QUICK = httpx.Timeout(60.0, connect=5.0)
_STREAMED = httpx.Timeout(None, connect=5.0)


class ServerError(click.ClickException):
    """A failure reported by (or about) the server; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(ServerError):
    """No connection to the server, or it was lost: every further request fails alike."""


class ServerClient:
    """The Ollama API of one npu-proxy server, with its errors as :class:`ServerError`."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=_QUICK)

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ServerUnreachable(
                f"could not connect to npu-proxy at {self.url}: is it running? "
                "start it with `npu-proxy serve`"
            ) from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"lost the connection to npu-proxy at {self.url} ({type(exc).__name__})"
            ) from None

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.is_success:
            return
        response.read()
        try:
            message = str(response.json().get("error") or "")
        except (ValueError, AttributeError):
            message = ""
        message = message or f"the server answered {response.status_code}"
        if response.status_code == 401:
            message += " (set NPU_PROXY_API_KEY to the server's key)"
        raise ServerError(message, response.status_code)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; the JSON reply (None for an empty body)."""
        with self._errors():
            response = self._http.request(method, path, json=body)
        self._check(response)
        return response.json() if response.content else None

    @contextlib.contextmanager
    def stream(self, path: str, body: dict[str, Any]) -> Iterator[Iterator[dict[str, Any]]]:
        """A streamed POST as its NDJSON objects; an ``{"error": ...}`` line raises.

        Leaving the ``with`` block closes the connection, which makes the server stop
        (a generation is cancelled, a pull removes its partial files).
        """
        with (
            self._errors(),
            self._http.stream("POST", path, json=body, timeout=_STREAMED) as response,
        ):
            self._check(response)

            def objects() -> Iterator[dict[str, Any]]:
                with self._errors():
                    for text in response.iter_lines():
                        if not text.strip():
                            continue
                        item = json.loads(text)
                        if "error" in item:
                            raise ServerError(str(item["error"]))
                        yield item

            yield objects()
