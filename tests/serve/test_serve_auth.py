"""API keys: 401 in the OpenAI shape without a valid bearer key, every key accepted, /health and /metrics
open (a flag closes /metrics), a constant-time compare over every key, and no key in any log line."""

from __future__ import annotations

import asyncio
import hmac
import logging

import httpx
import openai
import pytest
from serve_harness import LiveServer, live_server
from starlette.types import Receive, Scope, Send

from graphrun import envvars
from graphrun.cli import main
from graphrun.errors import ConfigError
from graphrun.serve import auth
from graphrun.serve.auth import APIKeyAuth, log_access_policy
from graphrun.serve.config import ServeConfig

KEYS = ("key-one-7f3a9c", "key-two-b81e44")
CLOSED = ["/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/anything", "/not-a-route"]


class _Inner:
    """The app behind the middleware: answers 200 and remembers what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _get(app, path: str, authorization: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        headers = {} if authorization is None else {"Authorization": authorization}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


def _assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert response.headers["www-authenticate"].startswith('Bearer realm="graphrun"')


@pytest.mark.parametrize("path", CLOSED)
def test_without_a_key_every_closed_path_is_401_and_the_app_never_sees_it(path):
    inner = _Inner()
    response = _get(APIKeyAuth(inner, KEYS), path)
    _assert_refused(response, "missing_api_key")
    assert response.headers["www-authenticate"] == 'Bearer realm="graphrun"'
    assert inner.paths == []


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Bearer {KEYS[0]}x", f"Bearer {KEYS[0][:-1]}", f"Bearer {KEYS[0].upper()}"],
)
def test_a_wrong_key_is_401_invalid_token(authorization):
    inner = _Inner()
    response = _get(APIKeyAuth(inner, KEYS), "/v1/models", authorization)
    _assert_refused(response, "invalid_api_key")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert KEYS[0] not in response.text and inner.paths == []


@pytest.mark.parametrize("authorization", [f"Basic {KEYS[0]}", KEYS[0], "Bearer", "Bearer   "])
def test_a_key_not_sent_as_bearer_counts_as_missing(authorization):
    _assert_refused(_get(APIKeyAuth(_Inner(), KEYS), "/v1/models", authorization), "missing_api_key")


@pytest.mark.parametrize("key", KEYS)
def test_each_key_is_accepted(key):
    inner = _Inner()
    assert _get(APIKeyAuth(inner, KEYS), "/v1/completions", f"Bearer {key}").status_code == 200
    assert _get(APIKeyAuth(inner, KEYS), "/v1/models", f"bearer  {key} ").status_code == 200
    assert inner.paths == ["/v1/completions", "/v1/models"]


@pytest.mark.parametrize("path", ["/health", "/metrics", "/openapi.json", "/docs"])
def test_health_metrics_and_the_api_description_stay_open(path):
    inner = _Inner()
    assert _get(APIKeyAuth(inner, KEYS), path).status_code == 200
    assert inner.paths == [path]


def test_the_flag_closes_metrics_but_not_health():
    app = APIKeyAuth(_Inner(), KEYS, metrics_require_api_key=True)
    _assert_refused(_get(app, "/metrics"), "missing_api_key")
    assert _get(app, "/metrics", f"Bearer {KEYS[1]}").status_code == 200
    assert _get(app, "/health").status_code == 200


def test_without_keys_nothing_is_checked():
    assert all(_get(APIKeyAuth(_Inner(), ()), path).status_code == 200 for path in CLOSED)


def test_every_key_is_compared_whichever_matches(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    middleware = APIKeyAuth(_Inner(), ("first", "second", "third"))
    for token in (b"first", b"third", b"none-of-them"):
        calls.clear()
        middleware.accepts(token)
        assert len(calls) == 3  # no early exit on a match
        assert {len(a) for a, _ in calls} | {len(b) for _, b in calls} == {32}  # digests: equal lengths


def test_the_config_hides_its_keys_and_errors_never_quote_one():
    config = ServeConfig(api_keys=KEYS)
    assert all(key not in repr(config) and key not in str(config) for key in KEYS)
    for bad in ("has space", "comma,inside", "nön-ascii", ""):
        with pytest.raises(ConfigError, match=r"API key #2") as info:
            ServeConfig(api_keys=(KEYS[0], bad))
        assert bad not in str(info.value) or not bad
    with pytest.raises(ConfigError, match="GRAPHRUN_API_KEY"):
        ServeConfig(metrics_require_api_key=True)


def test_graphrun_api_key_is_split_at_commas(monkeypatch):
    monkeypatch.setenv("GRAPHRUN_API_KEY", f" {KEYS[0]} ,{KEYS[1]},, ")
    assert envvars.api_keys() == KEYS
    monkeypatch.delenv("GRAPHRUN_API_KEY")
    assert envvars.api_keys() == ()


def test_serve_refuses_a_metrics_flag_without_a_key_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("GRAPHRUN_API_KEY", raising=False)
    assert main(["serve", "--model", "tiny", "--metrics-require-api-key"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--api-key" in err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org", ""])
def test_listening_beyond_loopback_without_a_key_warns_once(caplog, host):
    with caplog.at_level(logging.INFO, logger="graphrun.serve.auth"):
        log_access_policy(ServeConfig(host=host))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no API key" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_without_a_key_does_not_warn(caplog, host):
    with caplog.at_level(logging.INFO, logger="graphrun.serve.auth"):
        log_access_policy(ServeConfig(host=host))
    assert caplog.records == []


def test_with_a_key_the_policy_line_names_no_key(caplog):
    with caplog.at_level(logging.INFO, logger="graphrun.serve.auth"):
        log_access_policy(ServeConfig(host="0.0.0.0", api_keys=KEYS))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "keys accepted: 2" in caplog.text and all(key not in caplog.text for key in KEYS)


# ----- a live server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv():
    with live_server({"enforce_eager": True}, api_keys=KEYS) as server:  # graphs are not the question
        yield server


def _client(srv: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30)


@pytest.mark.parametrize("key", KEYS)
def test_the_openai_client_with_a_key_is_served(srv, key):
    client = _client(srv, key)
    out = client.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    ))  # fmt: skip
    assert chunks[-1].choices[0].finish_reason is not None
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_the_openai_client_with_a_wrong_key_gets_an_authentication_error(srv):
    with pytest.raises(openai.AuthenticationError) as info:
        _client(srv, "not-a-key").completions.create(model="tiny", prompt="hi", max_tokens=3)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_no_key_appears_in_any_log_line(srv, caplog):
    with caplog.at_level(logging.DEBUG):
        for authorization in (f"Bearer {KEYS[0]}", f"Bearer {KEYS[1]}", "Bearer guessed-wrong", None):
            headers = {} if authorization is None else {"Authorization": authorization}
            httpx.get(srv.url + "/v1/models", headers=headers, timeout=10)
            httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=headers)
    access = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert len(access) >= 8  # every request was logged, so the check below looked at them
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert all(key not in text for key in (*KEYS, "guessed-wrong"))
