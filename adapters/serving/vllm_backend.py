"""vLLM backend: the same ``Backend`` contract, served by one or more vLLM OpenAI-compatible servers over HTTP.

The adapter is the request's ``model``: a LoRA registered on the server under its canonical ``name@version``; the
base model is the entry of ``GET /v1/models`` whose ``parent`` is null, the adapters are the entries whose
``parent`` is that base. An adapter that no server lists is loaded with ``POST /v1/load_lora_adapter`` from the
folder the ``AdapterResolver`` gives (the server must see the same path, and must run with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, as ``rolora serve vllm`` does); otherwise the error names
``--lora-modules``.

With several endpoints a request goes to an endpoint that already lists its adapter (adapter affinity), the least
busy one of those; requests for the base model and for new adapters go to the least busy endpoint overall (round
robin between equals). Connection errors, 429 and 5xx are retried with exponential backoff; other 4xx are not,
and raise a ``UserError`` carrying the server's message. A server that cannot be reached raises a one-line
``RoloraRuntimeError`` naming the endpoint and ``rolora serve vllm``. The same code talks to a GPU ``vllm serve``
and to the CPU build.

>>> backend = VLLMBackend(["http://127.0.0.1:8000"], adapters=DirectoryAdapters(root))  # doctest: +SKIP
>>> backend.generate([GenerationRequest([{"role": "user", "content": "Hi"}], adapter="contracts-analyst")])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from rolora.errors import RoloraRuntimeError, UserError

from .base import (
    AdapterResolver,
    BackendBase,
    GenerationRequest,
    GenerationResult,
    json_schema_grammar,
    parse_adapter_ref,
)

if TYPE_CHECKING:
    from rolora.config import Config

__all__ = ["VLLMBackend"]

log = logging.getLogger("rolora.serving")
T = TypeVar("T")

_START_HINT = "start it with `rolora serve vllm` or fix backend.endpoints in rolora.yaml"


class _Unreachable(RoloraRuntimeError):
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


def _server_message(resp: httpx.Response) -> str:
    """The error text vLLM (or FastAPI, or a proxy) put in the body, on one line."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    msg: Any = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        msg = msg or body.get("message") or body.get("detail")
    if not msg:
        msg = resp.text.strip() or resp.reason_phrase
    return " ".join(str(msg).split())[:500]


def _connect_detail(e: Exception) -> str:
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
        return "connection failed"
    return f"connection dropped: {e or type(e).__name__}"


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
    on connection errors, 429 and 5xx, waiting ``backoff_s * 2**n`` (at most ``max_backoff_s``, or the server's
    ``Retry-After``). ``max_concurrency``: requests in flight per ``agenerate`` call. ``models_ttl_s``: how long a
    ``/v1/models`` listing is trusted for routing.
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
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
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
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s, pool=None)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        self.models_ttl_s = models_ttl_s
        self.down_for_s = down_for_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._lock = threading.Lock()  # guards in-flight counters and the round-robin cursor
        self._cursor = 0
        self._ssl: ssl.SSLContext | None = None
        self.http_calls = 0  # HTTP requests sent, retries included (for tests and benchmarks)

    @classmethod
    def from_config(cls, config: Config, adapters: AdapterResolver | None = None, **kwargs: Any) -> VLLMBackend:
        return cls(config.backend.endpoints, adapters, **kwargs)

    # -- public API -------------------------------------------------------------------------------------
    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Send every request (at most ``max_concurrency`` at once); results come back in request order."""
        if not requests:
            return []
        async with self._client() as client:
            targets = await self._prepare(client, [r.adapter for r in requests])
            sem = asyncio.Semaphore(self.max_concurrency)

            async def one(req: GenerationRequest) -> GenerationResult:
                async with sem:
                    return await self._generate_one(client, req, targets[req.adapter])

            return list(await asyncio.gather(*(one(r) for r in requests)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the text deltas of one request as the server produces them (server-sent events)."""
        async with self._client() as client:
            target = (await self._prepare(client, [request.adapter]))[request.adapter]
            ep = await self._endpoint_for(client, target)
            body = self._body(request, ep, target[0]) | {"stream": True}
            with self._busy(ep):
                async with self._open_stream(client, ep, body, target[0]) as resp:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            msg = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
                            raise RoloraRuntimeError(f"vLLM at {ep.url} failed while streaming: {msg}")
                        for choice in chunk.get("choices") or []:
                            delta = (choice.get("delta") or {}).get("content")
                            if delta:
                                yield delta

    def list_models(self) -> dict[str, list[str]]:
        """``{endpoint: [base model, adapters…]}`` as each server's ``/v1/models`` lists them now."""

        async def run() -> dict[str, list[str]]:
            async with self._client() as client:
                out = {}
                for ep in self.endpoints:
                    await self._refresh(client, ep, force=True)
                    out[ep.url] = [ep.base or "?", *sorted(ep.adapters)]
                return out

        return _run_sync(run())

    def load_adapter(self, ref: str) -> str:
        """Make sure some endpoint serves adapter ``ref`` (loading it if needed); returns its canonical name."""

        async def run() -> str:
            async with self._client() as client:
                canonical, _ = (await self._prepare(client, [ref]))[ref]
                assert canonical is not None
                return canonical

        return _run_sync(run())

    # -- routing ----------------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # created once: a fresh one costs ~40 ms per client
        return httpx.AsyncClient(timeout=self.timeout, headers=self._headers, verify=self._ssl)

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

    async def _refresh(self, client: httpx.AsyncClient, ep: _Endpoint, force: bool = False) -> None:
        """Read ``/v1/models`` of ``ep`` when the cached listing is older than ``models_ttl_s``."""
        if not force and time.monotonic() - ep.fetched_at < self.models_ttl_s:
            return
        resp = await self._send(client, ep, "GET", "/v1/models")
        self._raise_for_status(resp, ep, "listing models")
        data = resp.json().get("data") or []
        bases = [m["id"] for m in data if m.get("parent") is None]
        if not bases:
            raise RoloraRuntimeError(f"vLLM at {ep.url} lists no base model in /v1/models; is it a vLLM server?")
        ep.base = bases[0]
        ep.adapters = {m["id"] for m in data if m.get("parent") is not None}
        ep.fetched_at = time.monotonic()

    async def _refresh_all(self, client: httpx.AsyncClient) -> None:
        """Refresh every endpoint concurrently; unreachable ones are marked down, and if all are, raise."""
        eps = self._alive()  # endpoints marked down are skipped until down_for_s has passed (unless all are)
        results = await asyncio.gather(*(self._refresh(client, ep) for ep in eps), return_exceptions=True)
        down = []
        for ep, res in zip(eps, results, strict=True):
            if isinstance(res, _Unreachable):
                ep.down_until = time.monotonic() + self.down_for_s
                down.append(res)
            elif isinstance(res, BaseException):
                raise res
        if len(down) == len(eps):
            raise self._down_error(down)

    def _down_error(self, down: list[_Unreachable]) -> RoloraRuntimeError:
        if len(down) == 1:
            return down[0]
        urls = ", ".join(d.url for d in down)
        return RoloraRuntimeError(
            f"no vLLM server is reachable ({urls}: {down[0].detail}); start one with `rolora serve vllm --port N` "
            "or fix backend.endpoints in rolora.yaml"
        )

    async def _prepare(
        self, client: httpx.AsyncClient, refs: Sequence[str | None]
    ) -> dict[str | None, tuple[str | None, Path | None]]:
        """Resolve each distinct adapter ref to (canonical, folder) and make sure an endpoint serves it."""
        await self._refresh_all(client)
        out: dict[str | None, tuple[str | None, Path | None]] = {}
        for ref in dict.fromkeys(refs):
            if ref is None:
                out[ref] = (None, None)
                continue
            canonical, folder = self._canonical(ref)
            if not any(canonical in ep.adapters for ep in self._alive()):
                await self._load(client, self._pick(self._alive()), canonical, folder)
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

    async def _load(self, client: httpx.AsyncClient, ep: _Endpoint, canonical: str, folder: Path | None) -> None:
        """``POST /v1/load_lora_adapter`` on ``ep``; clear errors when the server does not allow it."""
        if folder is None:
            loaded = ", ".join(sorted(set().union(*(e.adapters for e in self.endpoints)))) or "none"
            raise UserError(
                f"adapter '{canonical}' is not loaded on any vLLM server (loaded: {loaded}) and no adapter folder "
                f"is known for it; give the backend an adapter resolver, or start vLLM with "
                f"--lora-modules {canonical}=FOLDER"
            )
        payload = {"lora_name": canonical, "lora_path": str(Path(folder).resolve())}
        resp = await self._send(client, ep, "POST", "/v1/load_lora_adapter", payload)
        msg = _server_message(resp) if resp.status_code != 200 else ""
        if resp.status_code == 200 or (resp.status_code == 400 and "already been loaded" in msg):
            ep.adapters.add(canonical)
            log.info("loaded adapter %s on %s", canonical, ep.url)
            return
        if resp.status_code in (404, 405) and msg in ("Not Found", "Method Not Allowed"):
            raise UserError(
                f"vLLM at {ep.url} does not allow loading adapters at runtime, so adapter '{canonical}' cannot be "
                f"loaded: restart it with `rolora serve vllm` (sets VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) or "
                f"list the adapter at start with --lora-modules {canonical}={payload['lora_path']}"
            )
        if resp.status_code == 404:
            raise UserError(
                f"vLLM at {ep.url} could not load adapter '{canonical}' from {payload['lora_path']}: {msg} "
                "(the server must see the same path: mount the adapters folder at the same place)"
            )
        self._raise_for_status(resp, ep, f"loading adapter '{canonical}'")

    async def _endpoint_for(self, client: httpx.AsyncClient, target: tuple[str | None, Path | None]) -> _Endpoint:
        """Adapter affinity: the least busy live endpoint that lists the adapter (loading it if none does)."""
        canonical, folder = target
        alive = self._alive()
        if canonical is None:
            return self._pick(alive)
        having = [ep for ep in alive if canonical in ep.adapters]
        if having:
            return self._pick(having)
        ep = self._pick(alive)
        await self._refresh(client, ep)
        await self._load(client, ep, canonical, folder)
        return ep

    # -- HTTP -------------------------------------------------------------------------------------------
    async def _send(
        self, client: httpx.AsyncClient, ep: _Endpoint, method: str, path: str, payload: Any = None
    ) -> httpx.Response:
        """One call with retries on connection errors, 429 and 5xx. Returns the final response (any other
        status is the caller's to judge); raises ``_Unreachable`` when the server cannot be reached."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                self.http_calls += 1
                resp = await client.request(method, ep.url + path, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as e:
                detail = _connect_detail(e)
                if attempt + 1 >= attempts:
                    raise _Unreachable(ep.url, f"{detail} after {attempts} tries") from e
                await asyncio.sleep(self._delay(attempt, None))
                continue
            except httpx.TimeoutException as e:
                raise RoloraRuntimeError(
                    f"vLLM at {ep.url} did not answer {method} {path} within {self.timeout.read:.0f} s; "
                    "raise the backend's timeout_s or lower max_tokens"
                ) from e
            if resp.status_code == 429 or resp.status_code >= 500:
                if attempt + 1 >= attempts:
                    raise RoloraRuntimeError(
                        f"vLLM at {ep.url} failed {method} {path} with HTTP {resp.status_code} after {attempts} "
                        f"tries: {_server_message(resp)}"
                    )
                log.warning("vLLM at %s answered HTTP %d; retrying", ep.url, resp.status_code)
                await asyncio.sleep(self._delay(attempt, resp.headers.get("retry-after")))
                continue
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), self.max_backoff_s))
        return delay * (1 + 0.1 * random.random())

    @staticmethod
    def _raise_for_status(resp: httpx.Response, ep: _Endpoint, what: str) -> None:
        if resp.status_code >= 400:
            raise UserError(f"vLLM at {ep.url} refused {what} (HTTP {resp.status_code}): {_server_message(resp)}")

    def _body(self, req: GenerationRequest, ep: _Endpoint, canonical: str | None) -> dict[str, Any]:
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
            body["structured_outputs"] = {"grammar": json_schema_grammar(req.json_schema)}
        return body

    async def _generate_one(
        self, client: httpx.AsyncClient, req: GenerationRequest, target: tuple[str | None, Path | None]
    ) -> GenerationResult:
        t0 = time.perf_counter()
        canonical = target[0]
        failures: list[_Unreachable] = []
        reloaded = False
        while True:
            ep = await self._endpoint_for(client, target)
            try:
                with self._busy(ep):
                    resp = await self._send(client, ep, "POST", "/v1/chat/completions", self._body(req, ep, canonical))
            except _Unreachable as e:  # fail over to another endpoint, if any is left
                failures.append(e)
                ep.down_until = time.monotonic() + self.down_for_s
                ep.fetched_at = float("-inf")
                if len(failures) >= len(self.endpoints):
                    raise self._down_error(failures) from None
                continue
            if resp.status_code == 404 and canonical is not None and not reloaded:
                # the adapter was unloaded (or the server restarted) since the listing: list again, reload once
                reloaded = True
                ep.adapters.discard(canonical)
                await self._refresh(client, ep, force=True)
                continue
            what = f"a chat completion for adapter '{canonical}'" if canonical else "a chat completion"
            self._raise_for_status(resp, ep, what)
            return self._result(req, resp.json(), canonical, time.perf_counter() - t0)

    def _result(
        self, req: GenerationRequest, data: dict[str, Any], canonical: str | None, latency: float
    ) -> GenerationResult:
        choice = (data.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        parsed = None
        if req.json_schema is not None:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None  # cut by max_tokens before the JSON closed
        usage = data.get("usage") or {}
        reason: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
        return GenerationResult(
            text=text,
            json=parsed,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=reason,
            latency_s=latency,
            adapter=canonical,
            backend=self.name,
            request_id=req.request_id,
        )

    def _open_stream(
        self, client: httpx.AsyncClient, ep: _Endpoint, body: dict[str, Any], canonical: str | None
    ) -> _Stream:
        return _Stream(self, client, ep, body, canonical)


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


class _Stream:
    """Opens a streaming chat completion with the same retries as ``_send`` (before the first byte only)."""

    def __init__(
        self,
        backend: VLLMBackend,
        client: httpx.AsyncClient,
        ep: _Endpoint,
        body: dict[str, Any],
        canonical: str | None,
    ) -> None:
        self.backend, self.client, self.ep, self.body, self.canonical = backend, client, ep, body, canonical
        self._resp: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        b, ep = self.backend, self.ep
        attempts = b.max_retries + 1
        for attempt in range(attempts):
            try:
                b.http_calls += 1
                req = self.client.build_request("POST", ep.url + "/v1/chat/completions", json=self.body)
                resp = await self.client.send(req, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as e:
                if attempt + 1 >= attempts:
                    detail = _connect_detail(e)
                    raise _Unreachable(ep.url, f"{detail} after {attempts} tries") from e
                await asyncio.sleep(b._delay(attempt, None))
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                await resp.aread()
                await resp.aclose()
                if attempt + 1 >= attempts:
                    raise RoloraRuntimeError(
                        f"vLLM at {ep.url} failed a streaming chat completion with HTTP {resp.status_code} after "
                        f"{attempts} tries: {_server_message(resp)}"
                    )
                await asyncio.sleep(b._delay(attempt, resp.headers.get("retry-after")))
                continue
            if resp.status_code >= 400:
                await resp.aread()
                await resp.aclose()
                what = f"a streaming chat completion for adapter '{self.canonical}'" if self.canonical else "a stream"
                b._raise_for_status(resp, ep, what)
            self._resp = resp
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            await self._resp.aclose()
