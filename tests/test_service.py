"""The HTTP API on real parts: the real agent and MiniLM retrieval on the sample contracts (domain ``contracts``) and
on a second tenant's corpus (``tenant-b``: two sample contracts copied into the test home), SmolLM2 in-process for
``/v1/ask`` and ``/v1/analyze``. Tenancy (401/403), size limits (413), concurrency (429) and SSE are checked."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import EXAMPLES, TEST_HOME

B_DOCS = ("supply_agreement", "commercial_lease")
A_KEY, B_KEY, AB_KEY, ALL_KEY = "key-tenant-a", "key-tenant-b", "key-a-and-b", "key-all-domains"


def _config() -> Any:
    from rolora.config import Config

    corpus_b = TEST_HOME / "corpora" / "tenant-b"
    corpus_b.mkdir(parents=True, exist_ok=True)
    for name in B_DOCS:
        shutil.copyfile(EXAMPLES / f"{name}.txt", corpus_b / f"{name}.txt")
    return Config.model_validate(
        {
            "home": str(TEST_HOME),
            "domains": {
                "contracts": {"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]},
                "tenant-b": {"corpus": [str(corpus_b)]},
            },
            "agent": {"k": 3, "max_queries": 1, "max_iterations": 1, "use_critic": False, "checkpointer": "memory"},
            "api": {
                "keys": [
                    {"key": A_KEY, "domains": ["contracts"], "name": "tenant-a"},
                    {"key_env": "ROLORA_TEST_KEY_B", "domains": ["tenant-b"], "name": "tenant-b"},
                    {"key": AB_KEY, "domains": ["contracts", "tenant-b"], "name": "both"},
                    {"key": ALL_KEY, "domains": ["*"], "name": "ops"},
                ],
                "max_body_bytes": 4096,
                "max_question_chars": 300,
                "max_concurrency": 1,
            },
        }
    )


@pytest.fixture(scope="module")
def service(
    examples_retriever: Any, embedder: Any, generator_dir: Any, inprocess_backend: Any
) -> Iterator[tuple[Any, Any]]:
    """(TestClient, app) of one app for the module; the agent shares the session backend."""
    from fastapi.testclient import TestClient

    from rolora.agents import Agent
    from rolora.retrieval import Retriever
    from rolora.service import create_app

    cfg = _config()
    Retriever("tenant-b", cfg, embedder=embedder).ingest(progress=False)

    def agent_factory(config: Any) -> Any:
        return Agent.from_config(config, backend=inprocess_backend, checkpointer="memory")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROLORA_TEST_KEY_B", B_KEY)
        app = create_app(cfg, agent_factory)
    with TestClient(app) as client:
        yield client, app


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _search(client: Any, domain: str, headers: dict[str, str], **extra: Any) -> Any:
    return client.post(
        "/v1/search", json={"query": "governing law", "domain": domain, "k": 3, **extra}, headers=headers
    )


def test_healthz_needs_no_key_and_reports_domains(service: tuple[Any, Any]) -> None:
    client, _ = service
    r = client.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["auth"] is True and body["max_concurrency"] == 1
    assert body["domains"]["contracts"]["documents"] == 12
    assert body["domains"]["tenant-b"]["documents"] == len(B_DOCS)
    assert body["backend"]["name"] == "inprocess"


def test_missing_or_unknown_key_is_401(service: tuple[Any, Any]) -> None:
    client, _ = service
    r = _search(client, "contracts", {})
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert _search(client, "contracts", _auth("not-a-key")).status_code == 401
    assert _search(client, "contracts", {"X-API-Key": "not-a-key"}).status_code == 401


def test_tenant_key_is_limited_to_its_domains(service: tuple[Any, Any]) -> None:
    client, _ = service
    assert _search(client, "contracts", _auth(A_KEY)).status_code == 200
    denied = _search(client, "tenant-b", _auth(A_KEY))
    assert denied.status_code == 403 and "tenant-b" in denied.json()["detail"]
    ok_b = _search(client, "tenant-b", {"X-API-Key": B_KEY})  # the key from its environment variable
    assert ok_b.status_code == 200
    assert {p["doc_id"] for p in ok_b.json()["passages"]} <= set(B_DOCS)  # never another tenant's documents
    assert _search(client, "contracts", {"X-API-Key": B_KEY}).status_code == 403
    for domain in ("contracts", "tenant-b"):
        assert _search(client, domain, _auth(ALL_KEY)).status_code == 200
    assert _search(client, "nowhere", _auth(ALL_KEY)).status_code == 404
    assert _search(client, "nowhere", _auth(A_KEY)).status_code == 403  # do not reveal what exists
    # the same rules on the other endpoints, refused before any model work
    ask = client.post("/v1/ask", json={"question": "Which law governs?", "domain": "tenant-b"}, headers=_auth(A_KEY))
    assert ask.status_code == 403
    analyze = client.post(
        "/v1/analyze", json={"doc_id": "supply_agreement", "domain": "tenant-b"}, headers=_auth(A_KEY)
    )
    assert analyze.status_code == 403
    several = client.post("/v1/ask", json={"question": "Which law governs?"}, headers=_auth(AB_KEY))
    assert several.status_code == 422 and "contracts, tenant-b" in several.json()["detail"]  # name one of them


def test_search_returns_spans_that_match_the_source(service: tuple[Any, Any], examples_retriever: Any) -> None:
    client, _ = service
    r = _search(client, "contracts", _auth(A_KEY), doc_id="nda_mutual", mode="hybrid")
    assert r.status_code == 200, r.text
    passages = r.json()["passages"]
    assert passages and all(p["doc_id"] == "nda_mutual" for p in passages)
    for p in passages:
        source = examples_retriever.document_text(p["doc_id"])
        assert source[p["start"] : p["end"]] == p["text"]
        assert p["citation"] == f"{p['doc_id']}[{p['start']}:{p['end']}]"


def test_oversized_requests_are_413(service: tuple[Any, Any]) -> None:
    client, _ = service
    big = {"query": "x" * 5000, "domain": "contracts"}
    r = client.post("/v1/search", json=big, headers=_auth(A_KEY))  # Content-Length over the limit
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes received are counted
        yield b'{"query": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'", "domain": "contracts"}'

    r = client.post("/v1/search", content=chunks(), headers=_auth(A_KEY) | {"Content-Type": "application/json"})
    assert r.status_code == 413
    long_question = {"question": "What is the term? " * 20, "domain": "contracts"}  # 360 chars, body under 4 KiB
    r = client.post("/v1/ask", json=long_question, headers=_auth(A_KEY))
    assert r.status_code == 413 and "max_question_chars" in r.json()["detail"]


def test_bad_requests_are_one_line_errors(service: tuple[Any, Any]) -> None:
    client, _ = service
    r = client.post("/v1/search", json={"query": "x", "domain": "contracts", "k": 0}, headers=_auth(A_KEY))
    assert r.status_code == 422
    r = client.post("/v1/analyze", json={"domain": "contracts"}, headers=_auth(A_KEY))
    assert r.status_code == 422  # neither doc_id nor text
    r = client.post(
        "/v1/analyze",
        json={"domain": "contracts", "doc_id": "nda_mutual", "categories": ["Nope"]},
        headers=_auth(A_KEY),
    )
    assert r.status_code == 400 and "Nope" in r.json()["detail"]
    r = client.post("/v1/analyze", json={"domain": "contracts", "doc_id": "no_such_doc"}, headers=_auth(A_KEY))
    assert r.status_code == 400 and "no_such_doc" in r.json()["detail"]


def test_missing_key_env_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    from rolora.errors import ConfigError
    from rolora.service import create_app

    monkeypatch.delenv("ROLORA_TEST_KEY_B", raising=False)
    with pytest.raises(ConfigError, match="ROLORA_TEST_KEY_B"):
        create_app(_config(), lambda cfg: None)  # type: ignore[arg-type,return-value]


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields["event"], json.loads(fields["data"])))
    return out


@pytest.mark.slow
def test_ask_streams_node_events_then_the_answer_and_limits_concurrency(service: tuple[Any, Any]) -> None:
    client, app = service
    question = {"question": "Which law governs the Mutual Non-Disclosure Agreement?", "domain": "contracts"}
    result: dict[str, Any] = {}

    def ask_streaming() -> None:
        headers = _auth(A_KEY) | {"Accept": "text/event-stream"}
        result["response"] = client.post("/v1/ask", json=question, headers=headers)

    worker = threading.Thread(target=ask_streaming)
    worker.start()
    limiter = app.state.rolora.limiter
    deadline = time.monotonic() + 60
    while limiter.in_flight == 0 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limiter.in_flight == 1, "the streamed ask never took its slot"
    busy = _search(client, "contracts", _auth(A_KEY))  # max_concurrency=1 and one request in flight
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    worker.join(timeout=600)
    r = result["response"]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "answer", kinds
    steps = [d["step"]["node"] for e, d in events if e == "step"]
    assert {"route", "retrieve", "analyse", "finalise"} <= set(steps), steps
    assert kinds.index("step") < kinds.index("answer")
    answer = events[-1][1]["answer"]
    assert answer["domain"] == "contracts" and answer["question"] == question["question"]
    for c in answer["citations"]:  # only verified spans survive
        assert c["verified"]
    assert limiter.in_flight == 0
    assert _search(client, "contracts", _auth(A_KEY)).status_code == 200  # the slot was released


@pytest.mark.slow
def test_analyze_endpoint_on_inline_text(service: tuple[Any, Any]) -> None:
    client, _ = service
    text = (EXAMPLES / "supply_agreement.txt").read_text(encoding="utf-8")
    body = {"domain": "tenant-b", "text": text, "categories": ["Governing Law"]}
    r = client.post("/v1/analyze", json=body, headers={"X-API-Key": B_KEY})
    assert r.status_code == 413  # a whole contract is over this app's 4 KiB body limit
    start = text.find("governed by")
    clause = text[max(0, start - 1500) : start + 1000]
    r = client.post("/v1/analyze", json=body | {"text": clause}, headers={"X-API-Key": B_KEY})
    assert r.status_code == 200, r.text
    result = r.json()
    [finding] = result["findings"]
    assert finding["category"] == "Governing Law" and finding["found"], finding
    assert clause[finding["quote_start"] : finding["quote_end"]] == finding["quote"]
    assert "Illinois" in clause[finding["start"] : finding["end"]]


def test_body_limit_counts_the_bytes_received() -> None:
    """A body sent without Content-Length is cut off at the limit; one under it reaches the app intact."""
    import asyncio

    from rolora.service import BodyLimitMiddleware

    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(chunks: list[bytes]) -> int:
        pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return pending.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/search", "headers": []}
        await BodyLimitMiddleware(app, max_bytes=1024)(scope, receive, send)
        return int(sent[0]["status"])

    assert asyncio.run(call([b"x" * 600, b"y" * 600])) == 413 and seen == []
    assert asyncio.run(call([b"x" * 500, b"y" * 500])) == 200 and seen == [b"x" * 500 + b"y" * 500]
