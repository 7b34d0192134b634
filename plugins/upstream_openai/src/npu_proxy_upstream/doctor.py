"""``npu-proxy doctor``'s check of the configured upstreams: is each engine reachable,
does it take the key, and which of its models pass the filter."""

from __future__ import annotations

from npu_proxy.checks import Check
from npu_proxy.engine.errors import InvalidRequestError
from npu_proxy.settings import Settings, SettingsError

from .settings import UpstreamConfig, load_upstreams

AREA = "upstreams"
GUIDE = "see docs/scale-out.md"


def check_upstreams(settings: Settings) -> list[Check]:
    """One finding per configured upstream (none when no upstream is configured)."""
    try:
        configs = load_upstreams()
    except SettingsError as exc:
        return [Check(AREA, "fail", str(exc), fix=f"correct the configuration ({GUIDE})")]
    return [check_one(config) for config in configs]


def check_one(config: UpstreamConfig) -> Check:
    """List the engine's models the way the server will (``GET /models``)."""
    import httpx

    from .backend import describe_error

    where = f"upstream {config.name} at {config.shown_url}"
    headers = ({"Authorization": f"Bearer {config.api_key.get_secret_value()}"}
               if config.api_key else {})
    try:
        response = httpx.get(config.url + "/models", headers=headers,
                             timeout=httpx.Timeout(10.0, connect=config.connect_timeout))
    except httpx.HTTPError as exc:
        return Check(AREA, "fail", f"{where}: {describe_error(exc)}",
                     fix="start the engine, or correct its url (the OpenAI base, e.g. "
                     ".../v1; OpenVINO Model Server: .../v3)")
    if response.status_code in (401, 403):
        return Check(AREA, "fail", f"{where} refused the API key ({response.status_code})",
                     fix=f"set the engine's key in {config.api_key_env}" if config.api_key_env
                     else "name the variable that holds its key with api_key_env")
    try:
        ids = [e["id"] for e in response.json()["data"] if isinstance(e.get("id"), str)]
    except (ValueError, KeyError, TypeError, AttributeError):
        ids = None
    if response.status_code != 200 or ids is None:
        return Check(AREA, "fail", f"{where} did not answer GET /models with a model list "
                     f"({response.status_code})",
                     fix=f"check that url is its OpenAI base ({GUIDE})")
    served = [i for i in ids if config.serves(i)]
    unnamed = []
    for model_id in served:
        try:
            config.local_name(model_id)
        except InvalidRequestError:
            unnamed.append(model_id)
    details = {"url": config.shown_url, "models": served, "unnamed": unnamed}
    if not served or unnamed:
        what = (f"lists {len(ids)} model(s), none passing its filter" if not served else
                f"lists models that are not valid names here: {', '.join(unnamed)}")
        fix = ("check the models patterns" if not served else
               "give the engine a model alias (llama-server --alias NAME)")
        return Check(AREA, "warn", f"{where} {what}", fix=fix, details=details)
    return Check(AREA, "ok", f"{where}: {len(served)} model(s): {', '.join(served)}",
                 details=details)
