"""The client surface as a real process: only our routes, only our errors, auth first, nobody's outage."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kodify_proxy import surface
from tests.servers import REPO, Server, kodify_proxy, upstreams_yaml

TOKEN = "sk-surface-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, upstream: Server) -> Iterator[Server]:
    """One shared token, MAX_N=4, in front of the session's fake upstream (`fake-model`, `fake-embed`)."""
    env = {"VLLM_API_KEY": TOKEN, "MAX_N": "4", "LITELLM_DISABLE_LAZY_ROUTES": "true"}
    server = kodify_proxy(tmp_path_factory.mktemp("surface"), upstreams_yaml(upstream.url), env=env, name="surface")
    yield server.start()
    server.stop()


def assert_ours(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error of ours: the status, a real type, param and code a string or null, no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["type"], str) and error["type"] not in ("", "None", "null")
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] == (code or str(status))
    assert "Traceback" not in error["message"] and TOKEN not in response.text
    return dict(error)


# --- the route table is README's -----------------------------------------------------------------------------------


def readme_routes() -> set[tuple[str, str]]:
    """(method, path) pairs of README's route table (rows like | `GET`, `POST` | `/v1/health` | …)."""
    text = (REPO / "README.md").read_text().split("### HTTP", 1)[1].split("\n### ", 1)[0]
    found = set()
    for methods, path in re.findall(r"^\| ((?:`[A-Z]+`(?:, )?)+) \| `(/[^`]*)` \|", text, re.MULTILINE):
        found |= {(method, path) for method in re.findall(r"`([A-Z]+)`", methods)}
    return found


def test_readme_lists_exactly_the_route_table() -> None:
    table = {(method, route.path) for route in surface.ROUTES for method in route.methods}
    assert readme_routes() == table


# --- default deny: a walk over LiteLLM's whole route table --------------------------------------------------------


def litellm_routes(server: Server) -> list[tuple[str, str]]:
    master = {"Authorization": f"Bearer {server.master_key()}"}
    document = httpx.get(server.url + "/openapi.json", headers=master, timeout=180)  # ~15 s to build
    assert document.status_code == 200
    paths = document.json()["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


def test_a_client_token_reaches_no_route_outside_the_table(guarded: Server) -> None:
    ours = {(method, route.path) for route in surface.ROUTES for method in route.methods}
    routes = litellm_routes(guarded)
    assert len(routes) > 500  # LiteLLM's whole surface, not a lazily loaded part of it
    reached = []
    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=30) as client:
        for method, path in routes:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            found = surface.match(method, concrete)
            if (method, concrete) in ours or found.ui or (found.route is not None and method in found.route.methods):
                continue
            response = client.request(method, concrete, json={} if method in ("POST", "PUT", "PATCH") else None)
            if response.status_code not in (404, 405):
                reached.append((method, path, response.status_code))
            elif method != "HEAD":  # a HEAD answer has no body
                code = "route_not_found" if response.status_code == 404 else "method_not_allowed"
                assert_ours(response, response.status_code, code)
    assert reached == []


def test_the_master_key_still_reaches_litellms_administration(guarded: Server) -> None:
    master = {"Authorization": f"Bearer {guarded.master_key()}"}
    for path in ("/get/config/callbacks", "/debug/asyncio-tasks"):
        assert httpx.get(guarded.url + path, headers=master).status_code == 200
        assert_ours(httpx.get(guarded.url + path, headers=AUTH), 404, "route_not_found")


@pytest.mark.parametrize("path", ["/vllm/tokenize", "/vllm/../tokenize", "/v1/messages", "/responses", "/v1/rerank"])
def test_routes_that_skipped_our_checks_are_gone(guarded: Server, path: str) -> None:
    response = httpx.post(guarded.url + path, headers=AUTH, json={"model": "fake-model", "n": 50, "prompt": "x"})
    assert_ours(response, 404, "route_not_found")


def test_a_wrong_method_is_405_naming_the_allowed_ones(guarded: Server) -> None:
    response = httpx.put(guarded.url + "/v1/completions", headers=AUTH)
    assert assert_ours(response, 405, "method_not_allowed")["message"].endswith("use POST")
    assert response.headers["allow"] == "POST"


# --- every error is ours, auth first ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[]", b"null", b"1", b'"text"', b"true"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/events"])
def test_json_that_is_not_an_object_is_400(guarded: Server, path: str, body: bytes) -> None:
    response = httpx.post(guarded.url + path, headers={**AUTH, "content-type": "application/json"}, content=body)
    assert "must be a JSON object" in assert_ours(response, 400)["message"]


@pytest.mark.parametrize("depth", [70, 1_000, 5_000])
def test_a_body_nested_too_deep_is_400(guarded: Server, depth: int) -> None:
    nested = b'{"language": "python", "segments": {"prefix": "x", "suffix": ' + b"[" * depth + b"]" * depth + b"}}"
    response = httpx.post(
        guarded.url + "/v1/completions", headers={**AUTH, "content-type": "application/json"}, content=nested
    )
    assert "nests deeper" in assert_ours(response, 400)["message"]


def test_form_data_is_not_json(guarded: Server) -> None:
    response = httpx.post(guarded.url + "/v1/events", headers=AUTH, data={"type": "view"})
    assert "Unsupported Media Type" in assert_ours(response, 400, "unsupported_media_type")["message"]


def test_auth_comes_before_any_look_at_the_body(guarded: Server) -> None:
    for body in (b"{not json", b'{"segments": 5}', b"[]"):
        response = httpx.post(
            guarded.url + "/v1/completions", content=body, headers={"content-type": "application/json"}
        )
        assert "Missing API key" in assert_ours(response, 401, "invalid_api_key")["message"]


def test_a_request_uvicorn_cannot_parse_gets_our_400(guarded: Server) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
    assert httpx.Response(400, content=body).json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "fake-model", "prompt": "x", "temperature": 1e999}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "temperature": float("nan")}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "n": 10**30}, "n"),
        # A field nobody validates (LiteLLM's route): no JSON encoder could send it on (hypothesis found it).
        ("/v1/embeddings", {"model": "fake-embed", "input": ["a"], "choice_index": float("inf")}, "choice_index"),
        ("/v1/chat/completions", {**CHAT, "metadata": {"a": [1, float("nan")]}}, "metadata"),
    ],
)
def test_numbers_nobody_can_serve_are_400_naming_the_field(
    guarded: Server, path: str, body: dict[str, Any], param: str
) -> None:
    import json

    content = json.dumps(body).replace("Infinity", "1e999").replace("NaN", "1e999")
    response = httpx.post(guarded.url + path, headers={**AUTH, "content-type": "application/json"}, content=content)
    assert assert_ours(response, 400)["param"] == param


@pytest.mark.parametrize("path", sorted(surface.UI_LOGINS))
def test_the_ui_login_without_litellms_database_says_what_it_needs(guarded: Server, path: str) -> None:
    master = guarded.master_key()
    form = {"username": "admin", "password": master}
    error = assert_ours(httpx.post(guarded.url + path, data=form), 503, "ui_needs_database")
    assert "DATABASE_URL is not set" in error["message"] and "docs/deployment.md" in error["message"]
    assert master not in error["message"]
    page = httpx.get(guarded.url + "/ui/", follow_redirects=True)  # the UI's pages are still LiteLLM's
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_no_traceback_in_the_log_for_client_errors(guarded: Server) -> None:
    before = guarded.log_text()
    for body in (b"[]", b"null", b"{", b'{"model": 5}', b"[" * 2000):
        httpx.post(
            guarded.url + "/v1/chat/completions", headers={**AUTH, "content-type": "application/json"}, content=body
        )
    httpx.post(guarded.url + "/v1/chat/completions", headers={"Authorization": "Bearer nope"}, json=CHAT)
    added = guarded.log_text()[len(before) :]
    assert "Traceback" not in added and TOKEN not in added


# --- nobody's request is anybody else's outage --------------------------------------------------------------------


BAD_REQUESTS = [
    ("/v1/embeddings", {"model": "fake-model", "input": "a generation model has no embeddings"}),
    ("/v1/completions", {"model": "fake-model", "prompt": "x", "response_format": {"type": "json_object"}, "n": 9}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": "many"}),
    ("/v1/completions", {"model": "fake-model", "prompt": "x", "suffix": "vLLM refuses suffix"}),
    ("/v1/chat/completions", {**CHAT, "messages": []}),
]


def test_bad_requests_never_take_the_only_upstream_out(guarded: Server) -> None:
    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=30) as client:
        for _ in range(3):
            for path, body in BAD_REQUESTS:
                assert 400 <= client.post(path, json=body).status_code < 500
            good = [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(5)]
            good += [client.post("/v1/completions", json={"model": "fake-model", "prompt": "x"}).status_code]
            assert good == [200] * 6
    assert httpx.get(guarded.url + "/health").json()["status"] == "ok"


def test_health_asks_no_upstream_per_request(guarded: Server, upstream: Server) -> None:
    def model_checks() -> int:
        return int(httpx.get(upstream.url + "/_count", params={"contains": "/v1/models"}).json())

    before = model_checks()
    started = time.monotonic()
    for _ in range(50):
        assert httpx.get(guarded.url + "/health").status_code == 200
    elapsed = time.monotonic() - started
    # The monitor checks every KODIFY_DISCOVERY_INTERVAL (1 s in tests), whatever /health is asked.
    assert model_checks() - before <= 2 * elapsed + 4  # two proxies poll it: this one and the session's


# --- the OpenAI routes without /v1 ---------------------------------------------------------------------------------


def test_the_openai_routes_answer_without_v1_as_with_it(guarded: Server) -> None:
    import openai

    with httpx.Client(base_url=guarded.url, headers=AUTH, timeout=30) as client:
        for path, body in (("/chat/completions", CHAT), ("/completions", {"model": "fake-model", "prompt": "x"})):
            bare, prefixed = client.post(path, json=body), client.post("/v1" + path, json=body)
            assert bare.status_code == prefixed.status_code == 200, bare.text
            assert bare.json().keys() == prefixed.json().keys()
        embed = client.post("/embeddings", json={"model": "fake-embed", "input": "x"})
        assert embed.status_code == 200 and embed.json()["data"][0]["object"] == "embedding"
        assert client.get("/models").json() == client.get("/v1/models").json()
        assert client.get("/models/fake-model").json() == client.get("/v1/models/fake-model").json()
        assert_ours(client.get("/models/nope"), 404, "model_not_found")
        assert_ours(client.put("/chat/completions"), 405, "method_not_allowed")
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {guarded.master_key()}"}).text
    # Counted under the /v1 route, whichever spelling the client used.
    assert 'route="/chat/completions"' not in metrics and 'route="/v1/chat/completions"' in metrics
    # An SDK given the server's address without /v1 (as a Continue apiBase without /v1 is).
    with openai.OpenAI(base_url=guarded.url, api_key=TOKEN, max_retries=0) as sdk:
        assert sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}]).choices
        assert sdk.models.retrieve("fake-model").id == "fake-model"


def test_model_name_is_read_from_either_spelling() -> None:
    assert surface.model_name("/v1/models/Qwen/Qwen2.5-Coder") == "Qwen/Qwen2.5-Coder"
    assert surface.model_name("/models/tiny") == "tiny"
    assert surface.model_name("/v1/models/") == surface.model_name("/v1/models") == surface.model_name("/x/tiny") == ""
    assert surface.match("GET", "/models/tiny").route == surface.match("GET", "/models/x").route
    route = surface.match("GET", "/models/tiny").route
    assert route is not None and (route.path, route.label) == ("/models/{model}", "/v1/models/{model}")
