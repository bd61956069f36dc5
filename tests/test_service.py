"""The HTTP API on real parts: the real agent and MiniLM retrieval on the sample contracts (domain ``contracts``) and
on a second tenant's corpus (``tenant-b``: two sample contracts copied into the test home under doc ids of their own,
so a leak of B's passages to A is visible), SmolLM2 in-process for ``/v1/ask`` and ``/v1/analyze``. Tenancy
(401/403, thread ownership), size limits (413), concurrency (429), deadlines (504), error bodies and SSE."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import EXAMPLES, TEST_HOME

B_SOURCES = {"tenant_b_supply": "supply_agreement", "tenant_b_lease": "commercial_lease"}  # doc id -> sample file
B_DOCS = tuple(B_SOURCES)
A_KEY, B_KEY, AB_KEY, ALL_KEY = "key-tenant-a", "key-tenant-b", "key-a-and-b", "key-all-domains"


def _config(**agent: Any) -> Any:
    from rolora.config import Config

    corpus_b = TEST_HOME / "corpora" / "tenant-b"
    shutil.rmtree(corpus_b, ignore_errors=True)
    corpus_b.mkdir(parents=True)
    for doc_id, name in B_SOURCES.items():
        shutil.copyfile(EXAMPLES / f"{name}.txt", corpus_b / f"{doc_id}.txt")
    return Config.model_validate(
        {
            "home": str(TEST_HOME),
            "domains": {
                "contracts": {"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]},
                "tenant-b": {"corpus": [str(corpus_b)]},
            },
            "agent": {
                "k": 3,
                "max_queries": 1,
                "max_iterations": 1,
                "use_critic": False,
                "checkpointer": "memory",
                **agent,
            },
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
    Retriever("tenant-b", cfg, embedder=embedder).ingest(progress=False, rebuild=True)

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


def test_healthz_says_up_without_a_key_and_details_only_with_one(service: tuple[Any, Any]) -> None:
    client, _ = service
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "up"}  # no domains, no errors, no backend
    assert client.get("/healthz", headers=_auth("not-a-key")).status_code == 401
    r = client.get("/healthz", headers=_auth(A_KEY))
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
    """The events of an SSE body, keep-alive comments (``: ping``) skipped as the SSE spec says."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
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


# -- tenant isolation on a real HTTP server ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_service(
    service: tuple[Any, Any], inprocess_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second app on uvicorn on a free loopback port (a real HTTP server), its runs in a real SQLite file."""
    import socket

    import uvicorn

    from rolora.agents import Agent
    from rolora.service import create_app

    runs = tmp_path_factory.mktemp("runs") / "runs.sqlite"
    cfg = _config(checkpointer="sqlite", checkpoint_path=str(runs))
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"max_concurrency": 4})})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROLORA_TEST_KEY_B", B_KEY)
        app = create_app(cfg, lambda config: Agent.from_config(config, backend=inprocess_backend))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _leaks(body: Any) -> list[str]:
    """Tenant B's doc ids found anywhere in a response body."""
    text = json.dumps(body)
    return [d for d in B_DOCS if d in text]


@pytest.mark.slow
def test_a_thread_belongs_to_the_key_that_started_it(http_service: str) -> None:
    """B asks on thread T; A then sends an off-topic question on the same T: A gets a fresh run of its own, with no
    trace of B's passages, and can neither read nor resume B's run; B's run is intact."""
    import httpx

    thread = "shared-thread-1"
    with httpx.Client(base_url=http_service, timeout=600) as http:
        b = http.post(
            "/v1/ask",
            json={"question": "Which law governs the supply agreement?", "domain": "tenant-b", "thread_id": thread},
            headers={"X-API-Key": B_KEY},
        )
        assert b.status_code == 200, b.text
        b_answer = b.json()
        assert b_answer["thread_id"] == thread
        assert b_answer["passages"] and {p["doc_id"] for p in b_answer["passages"]} <= set(B_DOCS)

        a = http.post(
            "/v1/ask",
            json={"question": "What is the boiling point of water at sea level?", "thread_id": thread},
            headers=_auth(A_KEY),
        )
        assert a.status_code == 200, a.text
        a_answer = a.json()
        assert a_answer["not_found"] and a_answer["domain"] == "contracts"
        assert a_answer["passages"] == [] and _leaks(a_answer) == []
        assert [s["node"] for s in a_answer["trace"]] == ["route", "finalise"]  # this run's steps only

        a_view = http.get(f"/v1/threads/{thread}", headers=_auth(A_KEY))
        assert a_view.status_code == 200 and _leaks(a_view.json()) == []  # A sees its own run, only
        for key in (ALL_KEY, AB_KEY):  # keys that never used the thread: it does not exist for them
            for r in (
                http.get(f"/v1/threads/{thread}", headers=_auth(key)),
                http.post(f"/v1/threads/{thread}/resume", json={}, headers=_auth(key)),
                http.post(f"/v1/threads/{thread}/resume", json={"stream": True}, headers=_auth(key)),
            ):
                assert r.status_code == 404 and r.json()["detail"] == f"no run with thread id '{thread}'"
                assert _leaks(r.json()) == []

        b_view = http.get(f"/v1/threads/{thread}", headers={"X-API-Key": B_KEY})
        assert b_view.status_code == 200
        kept = b_view.json()["answer"]
        assert kept["question"] == b_answer["question"] and kept["passages"] == b_answer["passages"]
        assert kept["thread_id"] == thread

        resumed = http.post(f"/v1/threads/{thread}/resume", json={}, headers={"X-API-Key": B_KEY})
        assert resumed.status_code == 200 and resumed.json()["answer"] == b_answer["answer"]

        # a new question on B's own thread starts from empty per-run state, too
        again = http.post(
            "/v1/ask",
            json={"question": "Who won the football world cup in 1998?", "domain": "tenant-b", "thread_id": thread},
            headers={"X-API-Key": B_KEY},
        )
        assert again.status_code == 200, again.text
        body = again.json()
        assert body["not_found"] and body["passages"] == [] and body["citations"] == []
        assert [s["node"] for s in body["trace"]] == ["route", "finalise"]


def test_error_bodies_carry_a_request_id_and_no_exception_text(
    service: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A server-side failure says what failed and the request id; the exception text is only in the log."""
    client, app = service
    svc = app.state.rolora
    secret = "/srv/secret/path/index.faiss is corrupt"
    real = svc.agent.retriever

    def broken(domain: str) -> Any:
        raise RuntimeError(secret)

    svc.agent.retriever = broken
    try:
        with caplog.at_level("ERROR", logger="rolora.service"):
            r = _search(client, "contracts", _auth(A_KEY))
    finally:
        svc.agent.retriever = real
    assert r.status_code == 500
    body = r.json()
    rid = r.headers["x-request-id"]
    assert body["request_id"] == rid and rid in body["detail"]
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert any(rid in rec.getMessage() and secret in rec.getMessage() for rec in caplog.records)
    # the caller's own mistakes keep their message, with the id too
    denied = _search(client, "tenant-b", _auth(A_KEY))
    assert denied.status_code == 403 and denied.json()["request_id"] == denied.headers["x-request-id"]


def test_per_key_quota_and_weighted_analyze() -> None:
    """Request units: the global limit and each key's quota; an analyze is weighed by its model calls."""
    from fastapi import HTTPException

    from rolora.service import Limiter
    from rolora.service.limits import units_for_model_calls

    lim = Limiter(4, tenant_limit=2)
    a1, a2 = lim.acquire("a"), lim.acquire("a")
    with pytest.raises(HTTPException) as busy:
        lim.acquire("a")  # A's quota is spent, the service is not
    assert busy.value.status_code == 429 and busy.value.headers == {"Retry-After": "1"}
    assert "quota is 2" in str(busy.value.detail)
    b1 = lim.acquire("b")
    assert lim.in_flight == 3 and lim.by_tenant == {"a": 2, "b": 1}
    with pytest.raises(HTTPException, match="max_concurrency=4"):
        lim.acquire("c", units=2)  # two units do not fit in the one left
    assert lim.acquire("vip", units=1, tenant_limit=3) is not None  # a key's own quota
    for release in (a1, a2, a2, b1):  # releasing twice is harmless
        release()
    assert lim.in_flight == 1
    assert units_for_model_calls(22, capacity=8) == 5  # all 22 categories: about five asks' worth of model calls
    assert units_for_model_calls(1, capacity=8) == 1
    assert units_for_model_calls(22, capacity=2) == 2  # never more than the whole capacity: it can still run


def test_a_request_past_its_deadline_is_504(service: tuple[Any, Any]) -> None:
    client, app = service
    svc = app.state.rolora
    real_config = svc.config
    real = svc.agent.retriever

    class Slow:  # the domain's retriever, whose search takes longer than the deadline
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def search(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.5)
            return self.inner.search(*args, **kwargs)

    def slow(domain: str) -> Any:
        return Slow(real(domain))

    svc.config = real_config.model_copy(update={"api": real_config.api.model_copy(update={"request_timeout_s": 0.1})})
    svc.agent.retriever = slow
    try:
        r = _search(client, "contracts", _auth(A_KEY))
    finally:
        svc.agent.retriever = real
        svc.config = real_config
    assert r.status_code == 504 and "request_timeout_s" in r.json()["detail"]
    time.sleep(0.6)  # the abandoned search finishes in its thread
    assert svc.limiter.in_flight == 0


def test_search_scoped_to_doc_ids_of_the_callers_domain_only(service: tuple[Any, Any]) -> None:
    client, _ = service
    r = _search(client, "contracts", _auth(A_KEY), doc_ids=["nda_mutual", "loan_agreement"], k=6)
    assert r.status_code == 200, r.text
    assert {p["doc_id"] for p in r.json()["passages"]} <= {"nda_mutual", "loan_agreement"}
    # another tenant's document is unknown in this domain: refused, and nothing of it comes back
    leak = _search(client, "contracts", _auth(A_KEY), doc_ids=[B_DOCS[0]])
    assert leak.status_code == 400 and B_DOCS[0] in leak.json()["detail"] and "passages" not in leak.json()
    ask = client.post(
        "/v1/ask",
        json={"question": "Which law governs?", "domain": "contracts", "doc_ids": [B_DOCS[0]]},
        headers=_auth(A_KEY),
    )
    assert ask.status_code == 400 and B_DOCS[0] in ask.json()["detail"]
