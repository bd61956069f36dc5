"""vLLM backend: the same ``Backend`` contract, served by one or more vLLM OpenAI-compatible servers.

The HTTP client is the ``openai`` package's ``AsyncOpenAI``, one pooled client per endpoint (and event loop): it
retries connection errors, timeouts, 408, 409, 429 and 5xx with exponential backoff (0.5 s doubling to 8 s, or the
server's ``Retry-After``), never other 4xx, and parses the server-sent events of ``stream``. A 4xx raises a
``UserError`` carrying the server's message; a server that cannot be reached raises a one-line
``RoloraRuntimeError`` naming the endpoint and ``rolora serve vllm``. The same code talks to a GPU ``vllm serve``
and to the CPU build.

The adapter is the request's ``model``: a LoRA registered on the server under its canonical ``name@version``; the
base model is the entry of ``GET /v1/models`` whose ``parent`` is null, the adapters are the entries whose
``parent`` is that base. An adapter that no server lists is loaded with ``POST /v1/load_lora_adapter`` from the
folder the ``AdapterResolver`` gives (the server must see the same path, and must run with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and an API key, as ``rolora serve vllm`` does); otherwise the error names
``--lora-modules``. Structured output is vLLM's ``structured_outputs.grammar`` (through ``extra_body``): the xgrammar
EBNF the in-process backend decodes with, so both write the same JSON.

With several endpoints a request goes to an endpoint that already lists its adapter (adapter affinity), the least
busy one of those; requests for the base model and for new adapters go to the least busy endpoint overall (round
robin between equals).

>>> backend = VLLMBackend(["http://127.0.0.1:8000"], adapters=DirectoryAdapters(root))  # doctest: +SKIP
>>> backend.generate([GenerationRequest([{"role": "user", "content": "Hi"}], adapter="contracts-analyst")])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import openai
from openai import AsyncOpenAI

from rolora.errors import BackendUnavailableError, RoloraRuntimeError, UserError

from .base import (
    AdapterResolver,
    BackendBase,
    GenerationRequest,
    GenerationResult,
    json_schema_grammar,
    parse_adapter_ref,
    verify_adapter_files,
)

if TYPE_CHECKING:
    from rolora.config import Config

__all__ = ["VLLMBackend"]

log = logging.getLogger("rolora.serving")
T = TypeVar("T")
Target = tuple[str | None, Path | None]  # (canonical adapter or None for the base model, its folder)

_START_HINT = "start it with `rolora serve vllm` or fix backend.endpoints in rolora.yaml"
_RETRIED = "connection errors, timeouts, 408, 409, 429 and 5xx"


class _Unreachable(BackendUnavailableError):
    """An endpoint could not be reached after all retries; routing catches it to fail over to another one."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"vLLM server at {url} is not reachable ({detail}); {_START_HINT}")
        self.url = url
        self.detail = detail


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    base: str | None = None  # served name of the base model (the /v1/models entry whose parent is null)
    adapters: set[str] = field(default_factory=set)  # LoRA names listed by /v1/models
    fetched_at: float = float("-inf")
    down_until: float = 0.0

    def alive(self, now: float) -> bool:
        return now >= self.down_until


def _server_message(e: openai.APIStatusError) -> str:
    """The error text vLLM (or FastAPI, or a proxy) put in the body, on one line."""
    body = e.body
    msg: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        msg = msg or body.get("message") or body.get("detail")
    if not msg:
        msg = e.response.text.strip() or e.response.reason_phrase
    return " ".join(str(msg).split())[:500]


def _connect_detail(e: openai.APIConnectionError) -> str:
    cause = e.__cause__
    if cause is None or type(cause).__name__.startswith("Connect"):
        return "connection failed"
    return f"connection dropped: {cause or type(cause).__name__}"


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also from inside a running event loop (in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class VLLMBackend(BackendBase):
    """Client of vLLM OpenAI-compatible servers; see the module docstring.

    ``endpoints``: base URLs (``http://127.0.0.1:8000``; a trailing ``/v1`` is accepted). ``adapters``: resolves
    ``name`` / ``name@version`` to (canonical name, folder); without it only adapters the servers already list
    can be used. ``timeout_s``: per HTTP call (a long generation needs a larger one). ``max_retries``: extra tries
    on connection errors, timeouts, 408, 409, 429 and 5xx. ``api_key``: the servers' ``--api-key`` (needed where
    runtime adapter loading is on). ``max_concurrency``: requests in flight per ``agenerate`` call.
    ``models_ttl_s``: how long a ``/v1/models`` listing is trusted for routing. ``down_for_s``: how long an
    unreachable endpoint is skipped.
    """

    name = "vllm"

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("http://127.0.0.1:8000",),
        adapters: AdapterResolver | None = None,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 3,
        max_concurrency: int = 32,
        models_ttl_s: float = 60.0,
        down_for_s: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not urls:
            raise UserError("the vLLM backend needs at least one endpoint URL (backend.endpoints in rolora.yaml)")
        cleaned = []
        for url in urls:
            u = url.strip().rstrip("/")
            u = u.removesuffix("/v1")
            if not u.startswith(("http://", "https://")):
                raise UserError(f"vLLM endpoint {url!r} must be an http(s) URL such as http://127.0.0.1:8000")
            cleaned.append(u)
        if max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {max_retries}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise UserError("timeout_s and connect_timeout_s must be > 0")
        if max_concurrency < 1:
            raise UserError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.endpoints = [_Endpoint(u) for u in dict.fromkeys(cleaned)]
        self._resolver = adapters
        self.timeout = openai.Timeout(timeout_s, connect=connect_timeout_s)
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.models_ttl_s = models_ttl_s
        self.down_for_s = down_for_s
        # "EMPTY" is what vLLM's docs send to a server without --api-key; an explicit value also keeps AsyncOpenAI
        # from sending an OPENAI_API_KEY found in the environment to this server.
        self._api_key = api_key or "EMPTY"
        self._lock = threading.Lock()  # guards in-flight counters, the round-robin cursor and the client cache
        self._cursor = 0
        # one pooled AsyncOpenAI per endpoint and event loop (a connection pool belongs to the loop that made it)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncOpenAI]] = (
            weakref.WeakKeyDictionary()
        )
        self.http_calls = 0  # HTTP requests sent, retries included (for tests and benchmarks)

    @classmethod
    def from_config(cls, config: Config, adapters: AdapterResolver | None = None, **kwargs: Any) -> VLLMBackend:
        """``backend.endpoints``, ``timeout_s``, ``max_retries`` and the key in ``$<api_key_env>`` from the config."""
        b = config.backend
        api_key = None
        if b.api_key_env:
            api_key = os.environ.get(b.api_key_env)
            if not api_key:
                raise UserError(
                    f"backend.api_key_env names ${b.api_key_env}, which is not set; export it with the vLLM "
                    "server's API key, or remove backend.api_key_env"
                )
        opts: dict[str, Any] = {"timeout_s": b.timeout_s, "max_retries": b.max_retries, "api_key": api_key}
        return cls(b.endpoints, adapters, **(opts | kwargs))

    # -- public API -------------------------------------------------------------------------------------
    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Send every request (at most ``max_concurrency`` at once); results come back in request order."""
        if not requests:
            return []
        targets = await self._prepare([r.adapter for r in requests])
        sem = asyncio.Semaphore(self.max_concurrency)

        async def one(req: GenerationRequest) -> GenerationResult:
            async with sem:
                return await self._generate_one(req, targets[req.adapter])

        return list(await asyncio.gather(*(one(r) for r in requests)))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sync wrapper: one event loop per call, whose pooled clients are closed when it ends."""
        return _run_sync(self._scoped(self.agenerate(requests)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the text deltas of one request as the server produces them (server-sent events)."""
        target = (await self._prepare([request.adapter]))[request.adapter]
        ep = await self._endpoint_for(target)
        what = f"a streaming chat completion for adapter '{target[0]}'" if target[0] else "a streaming chat completion"
        with self._busy(ep):
            chunks = await self._call(
                ep, what, lambda c: c.chat.completions.create(**self._body(request, ep, target[0]), stream=True)
            )
            async with chunks:
                try:
                    async for chunk in chunks:
                        for choice in chunk.choices:
                            if choice.delta.content:
                                yield choice.delta.content
                except openai.APIError as e:  # an error event inside the stream
                    raise RoloraRuntimeError(f"vLLM at {ep.url} failed while streaming: {e.message}") from e

    def list_models(self) -> dict[str, list[str]]:
        """``{endpoint: [base model, adapters…]}`` as each server's ``/v1/models`` lists them now."""

        async def run() -> dict[str, list[str]]:
            out = {}
            for ep in self.endpoints:
                await self._refresh(ep, force=True)
                out[ep.url] = [ep.base or "?", *sorted(ep.adapters)]
            return out

        return _run_sync(self._scoped(run()))

    def load_adapter(self, ref: str) -> str:
        """Make sure some endpoint serves adapter ``ref`` (loading it if needed); returns its canonical name."""

        async def run() -> str:
            canonical, _ = (await self._prepare([ref]))[ref]
            assert canonical is not None
            return canonical

        return _run_sync(self._scoped(run()))

    async def aclose(self) -> None:
        """Close the pooled clients of the running event loop (a long-running async app calls it at shutdown)."""
        with self._lock:
            clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()

    def close(self) -> None:
        """Forget every pooled client; those of a loop that is still running are closed by ``aclose``."""
        with self._lock:
            self._clients.clear()

    # -- clients ----------------------------------------------------------------------------------------
    async def _scoped(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        finally:
            await self.aclose()

    def _client(self, ep: _Endpoint) -> AsyncOpenAI:
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients.setdefault(loop, {})
            client = clients.get(ep.url)
            if client is None:
                client = clients[ep.url] = AsyncOpenAI(
                    base_url=ep.url + "/v1",
                    api_key=self._api_key,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    http_client=openai.DefaultAsyncHttpxClient(
                        timeout=self.timeout, event_hooks={"request": [self._count]}
                    ),
                )
            return client

    async def _count(self, _request: Any) -> None:
        self.http_calls += 1

    async def _call(self, ep: _Endpoint, what: str, fn: Callable[[AsyncOpenAI], Awaitable[T]]) -> T:
        """``fn(client of ep)`` with the client's retries; turns what is left after them into rolora errors.
        A 4xx other than 408/409/429 comes back as ``openai.APIStatusError`` for the caller to judge."""
        tries = self.max_retries + 1
        try:
            return await fn(self._client(ep))
        except openai.APITimeoutError as e:
            raise RoloraRuntimeError(
                f"vLLM at {ep.url} did not answer {what} within {self.timeout.read:.0f} s ({tries} tries); "
                "raise backend.timeout_s in rolora.yaml or lower max_tokens"
            ) from e
        except openai.APIConnectionError as e:
            raise _Unreachable(ep.url, f"{_connect_detail(e)} after {tries} tries") from e
        except openai.APIStatusError as e:
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise RoloraRuntimeError(
                    f"vLLM at {ep.url} failed {what} with HTTP {e.status_code} after {tries} tries: "
                    f"{_server_message(e)}"
                ) from e
            raise

    @staticmethod
    def _refused(e: openai.APIStatusError, ep: _Endpoint, what: str) -> UserError:
        hint = ""
        if e.status_code == 401:
            hint = "; give the backend the server's API key (backend.api_key_env in rolora.yaml, or api_key=)"
        return UserError(f"vLLM at {ep.url} refused {what} (HTTP {e.status_code}): {_server_message(e)}{hint}")

    # -- routing ----------------------------------------------------------------------------------------
    def _busy(self, ep: _Endpoint) -> _InFlight:
        return _InFlight(self, ep)

    def _pick(self, candidates: list[_Endpoint]) -> _Endpoint:
        """Least in-flight among ``candidates``, round robin between equals."""
        with self._lock:
            self._cursor += 1
            n = len(candidates)
            order = [candidates[(self._cursor + i) % n] for i in range(n)]
            return min(order, key=lambda e: e.in_flight)

    def _alive(self) -> list[_Endpoint]:
        now = time.monotonic()
        alive = [e for e in self.endpoints if e.alive(now)]
        return alive or list(self.endpoints)  # all marked down: try them all again

    async def _refresh(self, ep: _Endpoint, force: bool = False) -> None:
        """Read ``/v1/models`` of ``ep`` when the cached listing is older than ``models_ttl_s``."""
        if not force and time.monotonic() - ep.fetched_at < self.models_ttl_s:
            return
        try:
            page = await self._call(ep, "listing models", lambda c: c.models.list())
        except openai.APIStatusError as e:
            raise self._refused(e, ep, "listing models") from e
        data = [(m.id, getattr(m, "parent", None)) for m in page.data]
        bases = [mid for mid, parent in data if parent is None]
        if not bases:
            raise RoloraRuntimeError(f"vLLM at {ep.url} lists no base model in /v1/models; is it a vLLM server?")
        ep.base = bases[0]
        ep.adapters = {mid for mid, parent in data if parent is not None}
        ep.fetched_at = time.monotonic()

    async def _refresh_all(self) -> None:
        """Refresh every endpoint concurrently; unreachable ones are marked down, and if all are, raise."""
        eps = self._alive()  # endpoints marked down are skipped until down_for_s has passed (unless all are)
        results = await asyncio.gather(*(self._refresh(ep) for ep in eps), return_exceptions=True)
        down = []
        for ep, res in zip(eps, results, strict=True):
            if isinstance(res, _Unreachable):
                ep.down_until = time.monotonic() + self.down_for_s
                down.append(res)
            elif isinstance(res, BaseException):
                raise res
        if len(down) == len(eps):
            raise self._down_error(down)

    def _down_error(self, down: list[_Unreachable]) -> BackendUnavailableError:
        if len(down) == 1:
            return down[0]
        urls = ", ".join(d.url for d in down)
        return BackendUnavailableError(
            f"no vLLM server is reachable ({urls}: {down[0].detail}); start one with `rolora serve vllm --port N` "
            "or fix backend.endpoints in rolora.yaml"
        )

    async def _prepare(self, refs: Sequence[str | None]) -> dict[str | None, Target]:
        """Resolve each distinct adapter ref to (canonical, folder) and make sure an endpoint serves it."""
        await self._refresh_all()
        out: dict[str | None, Target] = {}
        for ref in dict.fromkeys(refs):
            if ref is None:
                out[ref] = (None, None)
                continue
            canonical, folder = self._canonical(ref)
            if not any(canonical in ep.adapters for ep in self._alive()):
                await self._load(self._pick(self._alive()), canonical, folder)
            out[ref] = (canonical, folder)
        return out

    def _canonical(self, ref: str) -> tuple[str, Path | None]:
        if self._resolver is not None:
            canonical, folder = self._resolver(ref)
            return canonical, folder
        name, version = parse_adapter_ref(ref)
        listed = set().union(*(ep.adapters for ep in self.endpoints))
        if version is not None or ref in listed:
            return ref, None
        versions = [
            int(a.rpartition("@")[2]) for a in listed if a.startswith(f"{name}@") and a[len(name) + 1 :].isdigit()
        ]
        if versions:
            return f"{name}@{max(versions)}", None
        return ref, None

    async def _load(self, ep: _Endpoint, canonical: str, folder: Path | None) -> None:
        """``POST /v1/load_lora_adapter`` on ``ep``; clear errors when the server does not allow it."""
        if folder is None:
            loaded = ", ".join(sorted(set().union(*(e.adapters for e in self.endpoints)))) or "none"
            raise UserError(
                f"adapter '{canonical}' is not loaded on any vLLM server (loaded: {loaded}) and no adapter folder "
                f"is known for it; give the backend an adapter resolver, or start vLLM with "
                f"--lora-modules {canonical}=FOLDER"
            )
        verify_adapter_files(canonical, Path(folder))  # the bytes registered, checked right before vLLM reads them
        path = str(Path(folder).resolve())
        what = f"loading adapter '{canonical}'"
        try:
            await self._call(
                ep,
                what,
                lambda c: c.post("/load_lora_adapter", body={"lora_name": canonical, "lora_path": path}, cast_to=str),
            )
        except openai.APIStatusError as e:
            msg = _server_message(e)
            if not (e.status_code == 400 and "already been loaded" in msg):
                if e.status_code in (404, 405) and msg in ("Not Found", "Method Not Allowed"):
                    raise UserError(
                        f"vLLM at {ep.url} does not allow loading adapters at runtime, so adapter '{canonical}' "
                        f"cannot be loaded: restart it with `rolora serve vllm` (sets "
                        f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) or list the adapter at start with "
                        f"--lora-modules {canonical}={path}"
                    ) from e
                if e.status_code == 404:
                    raise UserError(
                        f"vLLM at {ep.url} could not load adapter '{canonical}' from {path}: {msg} "
                        "(the server must see the same path: mount the adapters folder at the same place)"
                    ) from e
                raise self._refused(e, ep, what) from e
        ep.adapters.add(canonical)
        log.info("loaded adapter %s on %s", canonical, ep.url)

    async def _endpoint_for(self, target: Target) -> _Endpoint:
        """Adapter affinity: the least busy live endpoint that lists the adapter (loading it if none does)."""
        canonical, folder = target
        alive = self._alive()
        if canonical is None:
            return self._pick(alive)
        having = [ep for ep in alive if canonical in ep.adapters]
        if having:
            return self._pick(having)
        ep = self._pick(alive)
        await self._refresh(ep)
        await self._load(ep, canonical, folder)
        return ep

    # -- requests ---------------------------------------------------------------------------------------
    def _body(self, req: GenerationRequest, ep: _Endpoint, canonical: str | None) -> dict[str, Any]:
        """Keyword arguments of ``chat.completions.create``."""
        body: dict[str, Any] = {
            "model": canonical or ep.base,
            "messages": [dict(m) for m in req.messages],
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.json_schema is not None:  # the same grammar the in-process backend decodes with (format and order)
            body["extra_body"] = {"structured_outputs": {"grammar": json_schema_grammar(req.json_schema)}}
        if req.min_tokens:  # vLLM's extension of the OpenAI API
            body.setdefault("extra_body", {})["min_tokens"] = req.min_tokens
        return body

    async def _generate_one(self, req: GenerationRequest, target: Target) -> GenerationResult:
        t0 = time.perf_counter()
        canonical = target[0]
        what = f"a chat completion for adapter '{canonical}'" if canonical else "a chat completion"
        failures: list[_Unreachable] = []
        reloaded = False
        while True:
            ep = await self._endpoint_for(target)
            try:
                body = self._body(req, ep, canonical)

                async def create(client: AsyncOpenAI, body: dict[str, Any] = body) -> Any:
                    return await client.chat.completions.create(**body)

                with self._busy(ep):
                    completion = await self._call(ep, what, create)
            except _Unreachable as e:  # fail over to another endpoint, if any is left
                failures.append(e)
                ep.down_until = time.monotonic() + self.down_for_s
                ep.fetched_at = float("-inf")
                if len(failures) >= len(self.endpoints):
                    raise self._down_error(failures) from None
                continue
            except openai.APIStatusError as e:
                if e.status_code == 404 and canonical is not None and not reloaded:
                    # the adapter was unloaded (or the server restarted) since the listing: list again, reload once
                    reloaded = True
                    ep.adapters.discard(canonical)
                    await self._refresh(ep, force=True)
                    continue
                raise self._refused(e, ep, what) from e
            return self._result(req, completion, canonical, time.perf_counter() - t0)

    def _result(
        self, req: GenerationRequest, completion: Any, canonical: str | None, latency: float
    ) -> GenerationResult:
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content if choice is not None else None) or ""
        parsed = None
        if req.json_schema is not None:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None  # cut by max_tokens before the JSON closed
        usage = completion.usage
        reason: Literal["stop", "length"] = (
            "length" if choice is not None and choice.finish_reason == "length" else "stop"
        )
        return GenerationResult(
            text=text,
            json=parsed,
            prompt_tokens=int(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=int(usage.completion_tokens or 0) if usage else 0,
            finish_reason=reason,
            latency_s=latency,
            adapter=canonical,
            backend=self.name,
            request_id=req.request_id,
        )


class _InFlight:
    """Counts a request against its endpoint while it runs (the least-busy routing reads it)."""

    def __init__(self, backend: VLLMBackend, ep: _Endpoint) -> None:
        self.backend, self.ep = backend, ep

    def __enter__(self) -> None:
        with self.backend._lock:
            self.ep.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        with self.backend._lock:
            self.ep.in_flight -= 1
