"""``rolora serve api``: the HTTP service agent apps embed (FastAPI).

Endpoints:

- ``GET /healthz`` (no auth): model, backend, each domain's index status, requests in flight.
- ``POST /v1/ask`` ``{question, domain?, thread_id?, stream?}``: the agent's :class:`~rolora.agents.types.Answer` as
  JSON, or server-sent events when ``stream`` is true or the request sends ``Accept: text/event-stream``: one
  ``step`` event per graph node as it completes (plus ``passages``/``token`` events), then one ``answer`` event
  (``error`` on failure).
- ``POST /v1/search`` ``{query, domain, k?, mode?, doc_id?}``: cited passages (``doc_id[start:end]``).
- ``POST /v1/analyze`` ``{domain, doc_id | text, categories?}``: a :class:`~rolora.agents.analyze.ContractAnalysis`.

Tenancy: ``api.keys`` maps each key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``) to the domains it may
use (``"*"`` = all). A missing or unknown key is 401, a domain outside the key's list is 403. With no keys
configured there is no auth (local use; a warning is logged). Limits: a body over ``api.max_body_bytes`` is 413
(the Content-Length header and the bytes actually received are both checked), a question over
``api.max_question_chars`` is 413, and more than ``api.max_concurrency`` requests in flight get 429 with
``Retry-After``. The agent (backend, retrievers, checkpointer) is built once at startup and shared.

>>> app = create_app(load_config("rolora.yaml"))   # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rolora.config import ApiConfig, Config
from rolora.errors import ConfigError, IndexError_, RoloraError, RoloraRuntimeError, UserError

__all__ = ["AnalyzeRequest", "AskRequest", "SearchRequest", "ServiceAgent", "create_app", "resolve_api_keys"]

log = logging.getLogger("rolora.service")


class ServiceAgent(Protocol):
    """What the service needs from :class:`rolora.agents.Agent` (tests may wrap a real agent)."""

    backend: Any

    def retriever(self, domain: str) -> Any: ...

    async def aask(self, question: str, domain: str | None = None, *, thread_id: str | None = None) -> Any: ...

    def astream(
        self, question: str | None, domain: str | None = None, *, thread_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...

    def close(self) -> None: ...


AgentFactory = Callable[[Config], ServiceAgent]


# -- requests ------------------------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskRequest(_Request):
    question: str = Field(min_length=1)
    domain: str | None = None  # None: the key's only domain, or routed by the agent (keys with "*" / no auth)
    thread_id: str | None = Field(None, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    stream: bool = False


class SearchRequest(_Request):
    query: str = Field(min_length=1)
    domain: str
    k: int = Field(5, ge=1, le=50)
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    doc_id: str | None = None


class AnalyzeRequest(_Request):
    domain: str
    doc_id: str | None = None  # a contract in the domain's index
    text: str | None = None  # or the contract's text (offsets refer to it)
    categories: list[str] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AnalyzeRequest:
        if (self.doc_id is None) == (self.text is None):
            raise ValueError("give exactly one of doc_id or text")
        return self


# -- auth ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tenant:
    """An API key's holder: its name and the domains it may use (``"*"`` = all)."""

    name: str
    domains: frozenset[str]

    def allows(self, domain: str) -> bool:
        return "*" in self.domains or domain in self.domains

    def only_domain(self) -> str | None:
        return next(iter(self.domains)) if len(self.domains) == 1 and "*" not in self.domains else None


def resolve_api_keys(api: ApiConfig, env: Mapping[str, str] | None = None) -> list[tuple[str, Tenant]]:
    """``(key, tenant)`` for every configured key; a ``key_env`` that is not set is a ConfigError naming it."""
    env = os.environ if env is None else env
    out: list[tuple[str, Tenant]] = []
    for i, k in enumerate(api.keys):
        value = k.key if k.key is not None else env.get(k.key_env or "")
        if not value:
            raise ConfigError(f"api.keys.{i}.key_env: environment variable {k.key_env} is not set; export it")
        out.append((value, Tenant(k.name or f"key {i}", frozenset(k.domains))))
    return out


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


# -- limits --------------------------------------------------------------------------------------------------------
async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by its Content-Length, and by the bytes actually received (a chunked or
    lying client). The body is buffered (it is small by construction) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = {"detail": f"request body is over {self.max_bytes} bytes (api.max_body_bytes)"}
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if declared > self.max_bytes:
                await _send_json(send, 413, too_big)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _send_json(send, 413, too_big)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _Limiter:
    """At most ``limit`` requests in flight; the rest are refused at once (429), never queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def acquire(self) -> Callable[[], None]:
        """A release function (idempotent), or HTTP 429 when full. Runs on the event loop: no lock needed."""
        if self.in_flight >= self.limit:
            raise HTTPException(
                429,
                f"busy: {self.in_flight} requests in flight (api.max_concurrency={self.limit}); retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight -= 1

        return release


class _ReleasingStream(StreamingResponse):
    """A streaming response that frees its concurrency slot however the stream ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# -- the app -------------------------------------------------------------------------------------------------------
@dataclass
class _Service:
    config: Config
    agent: ServiceAgent
    keys: list[tuple[str, Tenant]]
    limiter: _Limiter
    startup_errors: dict[str, str] = field(default_factory=dict)

    def authenticate(self, request: Request) -> Tenant | None:
        """The caller's tenant; None when no keys are configured (open mode). 401 for a missing/unknown key."""
        if not self.keys:
            return None
        presented = _presented_key(request)
        if presented is None:
            raise HTTPException(
                401,
                "missing API key: send Authorization: Bearer KEY or X-API-Key: KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )
        tenant = None
        for key, t in self.keys:  # compare with every key in constant time
            if hmac.compare_digest(key.encode(), presented.encode()):
                tenant = t
        if tenant is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return tenant

    def check_domain(self, tenant: Tenant | None, domain: str) -> None:
        if tenant is not None and not tenant.allows(domain):
            allowed = ", ".join(sorted(tenant.domains)) or "none"
            raise HTTPException(403, f"this API key may not use domain '{domain}' (allowed: {allowed})")
        if domain not in self.config.domains:
            raise HTTPException(404, f"domain '{domain}' is not configured")

    def ask_domain(self, tenant: Tenant | None, domain: str | None) -> str | None:
        if domain is not None:
            self.check_domain(tenant, domain)
            return domain
        if tenant is None or "*" in tenant.domains:
            return None  # the agent routes
        only = tenant.only_domain()
        if only is None:
            allowed = ", ".join(sorted(tenant.domains))
            raise HTTPException(422, f"give a domain: this API key may use several ({allowed})")
        return only


def _open_index(agent: ServiceAgent, domain: str) -> None:
    agent.retriever(domain).stats()


def _default_agent(config: Config) -> ServiceAgent:
    from rolora.agents import Agent

    agent: ServiceAgent = Agent.from_config(config)
    return agent


def _sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def _error_status(e: RoloraError) -> int:
    if isinstance(e, IndexError_):
        return 503
    if isinstance(e, UserError):
        return 400
    return 500


def create_app(config: Config, agent_factory: AgentFactory | None = None) -> FastAPI:
    """The FastAPI app. ``agent_factory(config)`` builds the shared agent at startup (default:
    ``Agent.from_config(config)``, which creates the backend from ``config.backend``); it is closed at shutdown.

    Raises ``ConfigError`` at once when a key's ``key_env`` variable is not set.
    """
    keys = resolve_api_keys(config.api)
    if not keys:
        log.warning("api.keys is empty: no authentication and every domain is open (local use only)")
    factory = agent_factory or _default_agent

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        agent = await asyncio.to_thread(factory, config)
        service = _Service(config, agent, keys, _Limiter(config.api.max_concurrency))
        for domain in config.domains:  # open each index now, so the first request does not pay for it
            try:
                await asyncio.to_thread(_open_index, agent, domain)
            except RoloraError as e:
                service.startup_errors[domain] = str(e)
                log.warning("domain %s is not ready: %s", domain, e)
        app.state.rolora = service
        try:
            yield
        finally:
            await asyncio.to_thread(agent.close)

    app = FastAPI(title="rolora", version="1", lifespan=lifespan, summary="Agentic RAG over contracts, with citations")
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.api.max_body_bytes)

    @app.exception_handler(RoloraError)
    async def _rolora_error(request: Request, exc: RoloraError) -> JSONResponse:
        if isinstance(exc, RoloraRuntimeError):
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=_error_status(exc))

    def service_of(request: Request) -> _Service:
        svc: _Service = request.app.state.rolora
        return svc

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        svc = service_of(request)

        def domains() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for d in config.domains:
                try:
                    stats = svc.agent.retriever(d).stats()
                    out[d] = {"ready": True, "documents": stats["documents"], "chunks": stats["chunks"]}
                except RoloraError as e:
                    out[d] = {"ready": False, "error": str(e)}
            return out

        status = await asyncio.to_thread(domains)
        backend = svc.agent.backend
        return {
            "status": "ok" if all(s["ready"] for s in status.values()) else "degraded",
            "model": config.models.generator,
            "backend": {"kind": config.backend.kind, "name": getattr(backend, "name", type(backend).__name__)},
            "auth": bool(svc.keys),
            "domains": status,
            "in_flight": svc.limiter.in_flight,
            "max_concurrency": svc.limiter.limit,
        }

    @app.post("/v1/search")
    async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
        svc = service_of(request)
        svc.check_domain(svc.authenticate(request), body.domain)
        release = svc.limiter.acquire()
        try:
            retriever = svc.agent.retriever(body.domain)
            filters = {"doc_id": body.doc_id} if body.doc_id else None
            hits = await asyncio.to_thread(retriever.search, body.query, body.k, filters, body.mode)
        finally:
            release()
        passages = [
            {
                "citation": p.citation,
                "doc_id": p.doc_id,
                "start": p.start,
                "end": p.end,
                "score": p.score,
                "heading_path": p.heading_path,
                "chunk_id": p.chunk_id,
                "text": p.text,
            }
            for p in hits
        ]
        return {"domain": body.domain, "query": body.query, "passages": passages}

    @app.post("/v1/ask", response_model=None)
    async def ask(body: AskRequest, request: Request) -> Any:
        svc = service_of(request)
        tenant = svc.authenticate(request)
        limit = config.api.max_question_chars
        if len(body.question) > limit:
            raise HTTPException(
                413, f"question is {len(body.question)} characters, over api.max_question_chars={limit}"
            )
        domain = svc.ask_domain(tenant, body.domain)
        stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
        release = svc.limiter.acquire()
        if not stream:
            try:
                answer = await svc.agent.aask(body.question, domain, thread_id=body.thread_id)
            finally:
                release()
            return answer.model_dump(mode="json")

        async def events() -> AsyncIterator[str]:
            try:
                async for ev in svc.agent.astream(body.question, domain, thread_id=body.thread_id):
                    yield _sse(str(ev.get("type", "message")), ev)
            except RoloraError as e:
                yield _sse("error", {"type": "error", "status": _error_status(e), "error": str(e)})
            except Exception as e:  # the stream has started: report in-band, the status line is already sent
                log.exception("streamed /v1/ask failed")
                yield _sse("error", {"type": "error", "status": 500, "error": f"{type(e).__name__}: {e}"})

        return _ReleasingStream(
            events(), release, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/analyze")
    async def analyze(body: AnalyzeRequest, request: Request) -> dict[str, Any]:
        from rolora.agents.analyze import aanalyze_contract, select_categories, text_document

        svc = service_of(request)
        svc.check_domain(svc.authenticate(request), body.domain)
        select_categories(body.categories)  # 400 for unknown names before taking a slot
        release = svc.limiter.acquire()
        try:
            retriever = svc.agent.retriever(body.domain)
            source = text_document(body.text) if body.text is not None else str(body.doc_id)
            result = await aanalyze_contract(
                source,
                body.domain,
                config=config,
                backend=svc.agent.backend,
                retriever=retriever,
                categories=body.categories,
            )
        finally:
            release()
        return result.model_dump(mode="json")

    return app


def serve(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Run the app with uvicorn until interrupted (``rolora serve api``)."""
    import uvicorn

    app = create_app(config)
    uvicorn.run(app, host=host or config.api.host, port=port or config.api.port, log_level="info")
