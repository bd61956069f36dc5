"""``rolora serve api``: the HTTP service agent apps embed (FastAPI).

Endpoints:

- ``GET /healthz``: without a key, only that the service is up; with a key (or with no keys configured), the model,
  backend, each domain's index status and the request units in flight.
- ``POST /v1/ask`` ``{question, domain?, thread_id?, stream?}``: the agent's :class:`~rolora.agents.types.Answer` as
  JSON, or server-sent events when ``stream`` is true or the request sends ``Accept: text/event-stream``: one
  ``step`` event per graph node as it completes (plus ``passages``/``token`` events), then one ``answer`` event
  (``error`` on failure). Keep-alive pings every 15 s; a client that disconnects cancels its run's stream.
- ``GET /v1/threads/{thread_id}``: a run of the caller's (its answer, or the nodes it is paused before).
- ``POST /v1/threads/{thread_id}/resume`` ``{stream?}``: continue a run of the caller's from its last checkpoint.
- ``POST /v1/search`` ``{query, domain, k?, mode?, doc_id?}``: cited passages (``doc_id[start:end]``).
- ``POST /v1/analyze`` ``{domain, doc_id | text, categories?}``: a :class:`~rolora.agents.analyze.ContractAnalysis`.

Tenancy (:mod:`rolora.service.tenants`): ``api.keys`` maps each key (``Authorization: Bearer KEY`` or
``X-API-Key: KEY``) to the domains it may use (``"*"`` = all). A missing or unknown key is 401, a domain outside the
key's list is 403. Threads belong to the key that started them: another key's thread answers 404, as if it did not
exist, and each new question on a thread starts from empty per-run state. With no keys configured there is no auth
(local use; a warning is logged).

Limits (:mod:`rolora.service.limits`): a body over ``api.max_body_bytes`` is 413, a question over
``api.max_question_chars`` is 413; request units in flight over ``api.max_concurrency`` (all keys) or over the key's
quota get 429 with ``Retry-After``; a request past ``api.request_timeout_s`` ends with 504.

Errors: every response carries ``X-Request-ID``. A request's own mistakes (4xx) say what to change; a server-side
failure (5xx) says only what failed and the request id, and the exception is in the server log under that id.
The agent (backend, retrievers, checkpointer) is built once at startup and shared.

>>> app = create_app(load_config("rolora.yaml"))   # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rolora.config import Config
from rolora.errors import BackendUnavailableError, IndexError_, RoloraError, UserError

from .limits import BodyLimitMiddleware, Limiter, units_for_model_calls
from .tenants import Tenant, authenticate, resolve_api_keys

__all__ = ["AnalyzeRequest", "AskRequest", "SearchRequest", "ServiceAgent", "create_app", "serve"]

log = logging.getLogger("rolora.service")
T = TypeVar("T")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("rolora_request_id", default="-")
_THREAD_ID = r"^[A-Za-z0-9_.:-]+$"  # no "/": the tenant namespace separator (see tenants.py)


class ServiceAgent(Protocol):
    """What the service needs from :class:`rolora.agents.Agent` (tests may wrap a real agent)."""

    backend: Any

    def retriever(self, domain: str) -> Any: ...

    async def aask(
        self,
        question: str,
        domain: str | None = None,
        *,
        thread_id: str | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> Any: ...

    def astream(
        self,
        question: str | None,
        domain: str | None = None,
        *,
        thread_id: str | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def astate(self, thread_id: str) -> dict[str, Any]: ...

    async def aresume(self, thread_id: str) -> Any: ...

    def close(self) -> None: ...


AgentFactory = Callable[[Config], ServiceAgent]


# -- requests ------------------------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskRequest(_Request):
    question: str = Field(min_length=1)
    domain: str | None = None  # None: the key's only domain, or routed by the agent (keys with "*" / no auth)
    thread_id: str | None = Field(None, max_length=128, pattern=_THREAD_ID)
    doc_ids: list[str] | None = Field(None, max_length=50)  # only these documents of the domain (400 for unknown)
    stream: bool = False


class ResumeRequest(_Request):
    stream: bool = False


class SearchRequest(_Request):
    query: str = Field(min_length=1)
    domain: str
    k: int = Field(5, ge=1, le=50)
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    doc_id: str | None = None  # one document (kept for older clients; doc_ids for several)
    doc_ids: list[str] | None = Field(None, max_length=50)


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


# -- request ids and errors ----------------------------------------------------------------------------------------
class RequestIdMiddleware:
    """A fresh id for every request: set for the handlers (logs, error bodies) and sent as ``X-Request-ID``. An
    exception no handler took becomes a 500 that names only the request id; the log has the exception."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        token = _request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:
            status, body = _error_body(e, f"{scope.get('method')} {scope.get('path')}")
            if started:  # the status line is out: nothing left to tell the client
                return
            data = json.dumps(body).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            await send_with_id({"type": "http.response.start", "status": status, "headers": headers})
            await send_with_id({"type": "http.response.body", "body": data})
        finally:
            _request_id.reset(token)


def _status_of(e: BaseException) -> int:
    if isinstance(e, IndexError_ | BackendUnavailableError):
        return 503
    if isinstance(e, UserError):
        return 400
    if isinstance(e, TimeoutError):
        return 504
    return 500


def _error_body(e: BaseException, what: str) -> tuple[int, dict[str, Any]]:
    """The status and body for an error: the message of a request's own mistake (4xx, written for the caller);
    for anything else only what failed and the request id. The exception itself goes to the server log."""
    status, rid = _status_of(e), _request_id.get()
    if status < 500:
        return status, {"detail": str(e), "request_id": rid}
    log.error("request %s: %s failed: %s: %s", rid, what, type(e).__name__, e, exc_info=status == 500)
    detail = {
        503: "the domain's index is not ready",
        504: "the request ran past api.request_timeout_s; a run with a thread id can be resumed",
    }.get(status, "internal error")
    if isinstance(e, BackendUnavailableError):
        detail = "the model server is not reachable; try again later (a run with a thread id can be resumed)"
    return status, {"detail": f"{detail} (request id {rid}; the server log has the details)", "request_id": rid}


# -- the app -------------------------------------------------------------------------------------------------------
@dataclass
class _Service:
    config: Config
    agent: ServiceAgent
    keys: list[tuple[str, Tenant]]
    limiter: Limiter
    startup_errors: dict[str, str] = field(default_factory=dict)

    def tenant(self, request: Request) -> Tenant:
        t = authenticate(self.keys, request)
        assert t is not None  # required=True raises instead
        return t

    def acquire(self, tenant: Tenant, units: int = 1) -> Callable[[], None]:
        return self.limiter.acquire(tenant.namespace, units, tenant.max_concurrency)

    def check_domain(self, tenant: Tenant, domain: str) -> None:
        if not tenant.allows(domain):
            allowed = ", ".join(sorted(tenant.domains)) or "none"
            raise HTTPException(403, f"this API key may not use domain '{domain}' (allowed: {allowed})")
        if domain not in self.config.domains:
            raise HTTPException(404, f"domain '{domain}' is not configured")

    def ask_domain(self, tenant: Tenant, domain: str | None) -> str | None:
        if domain is not None:
            self.check_domain(tenant, domain)
            return domain
        if "*" in tenant.domains:
            return None  # the agent routes
        only = tenant.only_domain()
        if only is None:
            allowed = ", ".join(sorted(tenant.domains))
            raise HTTPException(422, f"give a domain: this API key may use several ({allowed})")
        return only

    async def own_run(self, tenant: Tenant, thread_id: str) -> dict[str, Any]:
        """The caller's run on ``thread_id``, or 404 — the same answer whether the thread is another key's or none's."""
        state = await self.agent.astate(tenant.thread(thread_id))
        domain = (state.get("values") or {}).get("domain")
        if not state.get("values") or (domain is not None and not tenant.allows(domain)):
            raise HTTPException(404, f"no run with thread id '{thread_id}'")
        return state

    async def run(
        self,
        tenant: Tenant,
        thread_id: str,
        stream: bool,
        question: str | None = None,
        domain: str | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> Any:
        """Ask ``question`` on the caller's ``thread_id`` (None: resume it), as one JSON answer or as events."""
        release = self.acquire(tenant)
        if stream:
            return _stream_run(self, tenant, release, question, domain, thread_id, doc_ids)
        agent_thread = tenant.thread(thread_id)
        try:
            if question is None:
                work = self.agent.aresume(agent_thread)
            else:
                work = self.agent.aask(question, domain, thread_id=agent_thread, doc_ids=doc_ids)
            return await self.deadline(self.answer_or_pause(work, tenant, thread_id))
        finally:
            release()

    async def answer_or_pause(self, run: Awaitable[Any], tenant: Tenant, thread_id: str) -> Any:
        """The run's answer as JSON with the caller's thread id; a run paused for review (human in the loop) is
        202 ``{"status": "paused", "next": [...]}``, to be continued with ``POST /v1/threads/{id}/resume``."""
        try:
            answer = await run
        except UserError:
            state = await self.agent.astate(tenant.thread(thread_id))
            if not state.get("values") or not state.get("next"):
                raise
            body = {"thread_id": thread_id, "status": "paused", "next": state["next"]}
            return JSONResponse(body, status_code=202)
        return {**answer.model_dump(mode="json"), "thread_id": thread_id}

    async def deadline(self, work: Awaitable[T]) -> T:
        async with asyncio.timeout(self.config.api.request_timeout_s):
            return await work


async def _prune_runs_hourly(agent: ServiceAgent) -> None:
    """Apply the runs retention (``agent.runs_retention_days`` / ``runs_keep``) at start and every hour."""
    prune = getattr(agent, "aprune_runs", None)
    while prune is not None:
        try:
            report = await prune()
            if report.deleted:
                log.info("runs retention: %s", report.summary())
        except Exception:  # a failed prune never stops the service; the next hour tries again
            log.exception("runs retention failed")
        await asyncio.sleep(3600)


def _open_index(agent: ServiceAgent, domain: str) -> None:
    agent.retriever(domain).stats()


def _default_agent(config: Config) -> ServiceAgent:
    from rolora.agents import Agent

    agent: ServiceAgent = Agent.from_config(config)
    return agent


class _ReleasingEvents(EventSourceResponse):
    """Server-sent events (keep-alive pings, disconnect handling) that free their request units however the stream
    ends: done, error, deadline or a client that went away."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], release: Callable[[], None]) -> None:
        super().__init__(content, ping=15, sep="\n", headers={"Cache-Control": "no-cache"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(kind: str, data: Mapping[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(data, ensure_ascii=False, default=str), event=kind, sep="\n")


def _public_event(ev: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
    """An agent event as the caller sees it: its own thread id, never the namespaced one."""
    out = dict(ev)
    if "thread_id" in out:
        out["thread_id"] = tenant.public(str(out["thread_id"]))
    if isinstance(out.get("answer"), dict) and "thread_id" in out["answer"]:
        out["answer"] = {**out["answer"], "thread_id": tenant.public(str(out["answer"]["thread_id"]))}
    return out


def _stream_run(
    svc: _Service,
    tenant: Tenant,
    release: Callable[[], None],
    question: str | None,
    domain: str | None,
    tid: str,
    doc_ids: Sequence[str] | None = None,
) -> _ReleasingEvents:
    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async with asyncio.timeout(svc.config.api.request_timeout_s):
                run = svc.agent.astream(question, domain, thread_id=tenant.thread(tid), doc_ids=doc_ids)
                async for ev in run:
                    yield _event(str(ev.get("type", "message")), _public_event(ev, tenant))
        except Exception as e:  # the stream has started: report in-band, the status line is already sent
            status, body = _error_body(e, "streamed run")
            yield _event("error", {"type": "error", "status": status, "thread_id": tid, **body})

    return _ReleasingEvents(events(), release)


def create_app(config: Config, agent_factory: AgentFactory | None = None) -> FastAPI:
    """The FastAPI app. ``agent_factory(config)`` builds the shared agent at startup (default:
    ``Agent.from_config(config)``, which creates the backend from ``config.backend``); it is closed at shutdown.

    Raises ``ConfigError`` at once when a key's ``key_env`` variable is not set.
    """
    keys = resolve_api_keys(config.api)
    if not keys:
        log.warning("api.keys is empty: no authentication and every domain is open (local use only)")
    factory = agent_factory or _default_agent
    api = config.api

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        agent = await asyncio.to_thread(factory, config)
        service = _Service(config, agent, keys, Limiter(api.max_concurrency, api.tenant_max_concurrency))
        for domain in config.domains:  # open each index now, so the first request does not pay for it
            try:
                await asyncio.to_thread(_open_index, agent, domain)
            except RoloraError as e:
                service.startup_errors[domain] = str(e)
                log.warning("domain %s is not ready: %s", domain, e)
        app.state.rolora = service
        pruner = asyncio.create_task(_prune_runs_hourly(agent))
        try:
            yield
        finally:
            pruner.cancel()
            await asyncio.to_thread(agent.close)

    app = FastAPI(title="rolora", version="1", lifespan=lifespan, summary="Agentic RAG over contracts, with citations")
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)

    async def _known_error(request: Request, exc: Exception) -> JSONResponse:
        status, body = _error_body(exc, f"{request.method} {request.url.path}")
        return JSONResponse(body, status_code=status)

    for known in (RoloraError, TimeoutError):  # ours, and a request past its deadline
        app.add_exception_handler(known, _known_error)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail, "request_id": _request_id.get()}, status_code=exc.status_code, headers=exc.headers
        )

    def service_of(request: Request) -> _Service:
        svc: _Service = request.app.state.rolora
        return svc

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        svc = service_of(request)
        if authenticate(svc.keys, request, required=False) is None:
            return {"status": "up"}  # details (domains, errors) need a key

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
        tenant = svc.tenant(request)
        svc.check_domain(tenant, body.domain)
        release = svc.acquire(tenant)
        try:
            retriever = svc.agent.retriever(body.domain)
            doc_ids = [*(body.doc_ids or []), *([body.doc_id] if body.doc_id else [])] or None
            search = functools.partial(retriever.search, body.query, body.k, mode=body.mode, doc_ids=doc_ids)
            hits = await svc.deadline(asyncio.to_thread(search))
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
        tenant = svc.tenant(request)
        limit = api.max_question_chars
        if len(body.question) > limit:
            raise HTTPException(
                413, f"question is {len(body.question)} characters, over api.max_question_chars={limit}"
            )
        domain = svc.ask_domain(tenant, body.domain)
        tid = body.thread_id or uuid.uuid4().hex
        stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
        return await svc.run(tenant, tid, stream, body.question, domain, body.doc_ids)

    @app.get("/v1/threads/{thread_id}")
    async def thread(thread_id: str, request: Request) -> dict[str, Any]:
        svc = service_of(request)
        tenant = svc.tenant(request)
        state = await svc.own_run(tenant, thread_id)
        final = state["values"].get("final")
        done = bool(final) and not state["next"]
        return {
            "thread_id": thread_id,
            "status": "done" if done else "paused",
            "next": state["next"],
            "answer": {**final, "thread_id": thread_id} if done else None,
        }

    @app.post("/v1/threads/{thread_id}/resume", response_model=None)
    async def resume(thread_id: str, request: Request, body: ResumeRequest | None = None) -> Any:
        svc = service_of(request)
        tenant = svc.tenant(request)
        await svc.own_run(tenant, thread_id)
        stream = (body is not None and body.stream) or "text/event-stream" in request.headers.get("accept", "")
        return await svc.run(tenant, thread_id, stream)

    @app.post("/v1/analyze")
    async def analyze(body: AnalyzeRequest, request: Request) -> dict[str, Any]:
        from rolora.agents.analyze import aanalyze_contract, select_categories, text_document

        svc = service_of(request)
        tenant = svc.tenant(request)
        svc.check_domain(tenant, body.domain)
        chosen = select_categories(body.categories)  # 400 for unknown names before taking a slot
        release = svc.acquire(tenant, units_for_model_calls(len(chosen), svc.limiter.limit))
        try:
            retriever = svc.agent.retriever(body.domain)
            source = text_document(body.text) if body.text is not None else str(body.doc_id)
            result = await svc.deadline(
                aanalyze_contract(
                    source,
                    body.domain,
                    config=config,
                    backend=svc.agent.backend,
                    retriever=retriever,
                    categories=body.categories,
                )
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
