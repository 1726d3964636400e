"""The HTTP request guard and start-up checks, in process (no models needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr, ValidationError

from openarc_mcp import errors
from openarc_mcp.app import OpenArcApp
from openarc_mcp.errors import InvalidRequestError
from openarc_mcp.settings import Settings
from openarc_mcp.transports.http import build_http_app, check_http_settings
from openarc_mcp.transports.http_guard import _host_allowed, _origin_allowed, host_names, is_loopback
from openarc_mcp.transports.openai.errors import error_body, error_for, load_error_for

KEY = "k-0123456789abcdef"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:1234", True),
        ("LOCALHOST", True),
        ("[::1]:8000", True),
        ("box.lan:8000", True),  # configured without a port: any port
        ("api.example:443", True),  # configured with this port
        ("api.example:8443", False),
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
        ("localhost:notaport", False),
    ],
)
def test_host_names(host: str, expected: bool) -> None:
    allowed = host_names("127.0.0.1", ["box.lan", "api.example:443"])
    assert _host_allowed(host, allowed) is expected


def test_any_host_with_a_star_and_the_bound_address_is_a_name() -> None:
    assert _host_allowed("whatever:1", ("*",))
    assert _host_allowed("10.0.0.5:8000", host_names("10.0.0.5", []))
    assert not _host_allowed("10.0.0.5:8000", host_names("0.0.0.0", []))
    assert _host_allowed("mybox.lan:8000", host_names("MyBox.lan", []))  # names compare lowercased


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("http://localhost:3000", True),
        ("https://127.0.0.1", True),
        ("http://[::1]:5173", True),
        ("https://app.example.com", True),
        ("https://app.example.com/", True),
        ("https://evil.example.com", False),
        ("null", False),
        ("file://localhost", False),
    ],
)
def test_origins(origin: str, expected: bool) -> None:
    assert _origin_allowed(origin, ("https://app.example.com",)) is expected


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_other_addresses_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"host": "0.0.0.0"}, "without an API key"),
        ({"host": "192.168.1.9"}, "without an API key"),
        ({"allowed_hosts": ["*"]}, "needs an API key"),
        ({"api_key": SecretStr("  ")}, "empty"),
    ],
)
def test_unsafe_settings_are_refused(overrides: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        check_http_settings(Settings(models_dir=tmp_path, transport="http", **overrides))


def test_remote_binding_with_a_key_is_allowed(tmp_path: Path) -> None:
    check_http_settings(Settings(models_dir=tmp_path, host="0.0.0.0", api_key=SecretStr(KEY)))


def test_a_wildcard_origin_is_refused_by_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be"):
        Settings(models_dir=tmp_path, allowed_origins=["*"])


def test_the_key_does_not_show_in_the_settings_repr(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, api_key=SecretStr(KEY))
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        models_dir=tmp_path, api_key=SecretStr(KEY), allowed_origins=["https://app.example.com"]
    )
    async with OpenArcApp(settings) as app:
        transport = httpx.ASGITransport(app=build_http_app(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            yield client


@pytest.mark.anyio
async def test_cors_answers_configured_origins_only_without_credentials(http: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = await http.options("/v1/models", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.status_code == 200  # preflights carry no key
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    other = await http.options("/v1/models", headers={"Origin": "https://evil.example", **preflight})
    assert other.headers.get("access-control-allow-origin") is None
    assert other.status_code == 400 and other.json()["error"] == {  # the envelope, as every refusal
        "message": "cross-origin preflight refused; not allowed by this server: origin",
        "type": "invalid_request_error",
        "param": "Origin",
        "code": None,
    }
    wrong_method = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PATCH"}
    refused = await http.options("/v1/models", headers=wrong_method)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "Access-Control-Request-Method", refused.json()
    listed = await http.get(
        "/v1/models", headers={"Origin": "https://app.example.com", "Authorization": f"Bearer {KEY}"}
    )
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "retry-after" in listed.headers["access-control-expose-headers"].lower()


def test_allowed_origins_are_read_as_browsers_send_them() -> None:
    """CORS compares origins as strings: what an operator pastes (a trailing slash, capitals, the
    default port) is kept as a browser's Origin header spells it; what no browser sends is refused."""
    pasted = [
        "HTTP://Good.Example/",
        "https://app.example:443",
        "https://app.example:8443",
        "chrome-extension://abc",
    ]
    assert Settings(allowed_origins=pasted).allowed_origins == [
        "http://good.example",
        "https://app.example",
        "https://app.example:8443",
        "chrome-extension://abc",
    ]
    for wrong in ("app.example.com", "https://app.example.com/app", "https://x:99999", "null"):
        with pytest.raises(ValidationError, match="is not a browser origin: give scheme://host"):
            Settings(allowed_origins=[wrong])


@pytest.mark.anyio
async def test_cors_lets_openais_browser_client_send_its_own_headers(http: httpx.AsyncClient) -> None:
    asked = "authorization, content-type, x-stainless-lang, x-stainless-retry-count, x-stainless-timeout"
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked,
    }
    allowed = await http.options("/v1/chat/completions", headers=preflight)
    assert allowed.status_code == 200, allowed.text
    granted = {name.strip() for name in allowed.headers["access-control-allow-headers"].lower().split(",")}
    assert {name.strip() for name in asked.split(",")} <= granted


@pytest.mark.anyio
async def test_auth_schemes_and_keys(http: httpx.AsyncClient) -> None:
    for header in ("", f"Basic {KEY}", "Bearer wrong", f"Bearer {KEY}x", KEY):
        reply = await http.get("/v1/models", headers={"Authorization": header} if header else {})
        assert reply.status_code == 401, header
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"]["type"] == "authentication_error"
    assert (await http.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})).status_code == 200
    assert (await http.get("/healthz")).status_code == 200


@pytest.mark.anyio
async def test_readiness_with_nothing_to_load_is_ready(http: httpx.AsyncClient) -> None:
    reply = await http.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.json() == {"status": "ready", "models": {}}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidRequestError("bad"), 400, None),
        (errors.ModelTypeError("wrong type"), 400, "wrong_model_type"),
        (errors.ModelNotFoundError("no such model"), 404, "model_not_found"),
        (errors.ServerBusyError("busy"), 429, "model_busy"),
        (errors.ModelNotReadyError("loading"), 503, "model_not_ready"),
        (errors.ModelLoadError("failed"), 503, "model_load_failed"),
        (errors.ModelUnloadedError("gone"), 503, "model_unloaded"),
        (errors.RequestTimeoutError("slow"), 504, "timeout"),
        (errors.EngineFault("boom"), 500, "server_error"),
    ],
)
def test_every_error_maps_to_one_status(error: errors.OpenArcError, status: int, code: str | None) -> None:
    mapped = error_for(error)
    assert (mapped.status, mapped.code) == (status, code)
    body = error_body(mapped.status, mapped.message, mapped.param, mapped.code)["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == {400: "invalid_request_error", 404: "invalid_request_error"}.get(
        status, {429: "rate_limit_error"}.get(status, "server_error")
    )


def test_a_failed_load_is_a_422_and_one_refused_for_an_argument_a_400_naming_it() -> None:
    failed = load_error_for(errors.ModelLoadError("could not load model 'x': broken IR"))
    assert (failed.status, failed.param, failed.code) == (422, "model", "model_load_failed")
    refused = load_error_for(errors.ModelLoadError("could not load model 'x': device 'TPU'...", "device"))
    assert (refused.status, refused.param, refused.code) == (400, "device", "model_load_refused")


def test_a_key_outside_ascii_is_compared_as_the_bytes_sent() -> None:
    from openarc_mcp.transports.http_guard import _authorized

    sent = "Bearer " + "clé".encode().decode("latin-1")  # how Starlette hands the header over
    assert _authorized(sent, "clé") and not _authorized("Bearer cle", "clé")
    assert not _authorized("Bearer \u20ac", "clé")  # not latin-1: never a match, never an error


@pytest.mark.anyio
async def test_a_body_that_stalls_ends_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from openarc_mcp.transports import http_guard

    monkeypatch.setattr(http_guard, "BODY_IDLE_S", 0.2)
    arrived = [{"type": "http.request", "body": b"{", "more_body": True}]
    stalled = anyio.Event()

    async def receive() -> Any:
        if arrived:
            return arrived.pop(0)
        await stalled.wait()  # never set: the sender stalls
        raise AssertionError

    bounded = http_guard._with_deadlines(receive, 1000)
    assert (await bounded())["body"] == b"{"
    with anyio.fail_after(5):
        assert (await bounded())["type"] == "http.disconnect"


@pytest.mark.anyio
async def test_after_the_body_waiting_for_a_disconnect_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed answer waits on receive() for the client to leave: that wait must not be cut."""
    from openarc_mcp.transports import http_guard

    monkeypatch.setattr(http_guard, "BODY_IDLE_S", 0.1)
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Any:
        if messages:
            return messages.pop(0)
        await anyio.sleep(0.5)
        return {"type": "http.disconnect", "late": True}

    bounded = http_guard._with_deadlines(receive, 1000)
    await bounded()
    assert (await bounded()).get("late") is True


@pytest.mark.anyio
async def test_a_trailing_slash_is_a_404_that_says_so_not_an_empty_redirect(http: httpx.AsyncClient) -> None:
    reply = await http.post("/v1/chat/completions/", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 404, reply.text
    assert "without the trailing slash: /v1/chat/completions" in reply.json()["error"]["message"]
