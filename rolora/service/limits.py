"""Request limits: body size (413), request units in flight, globally and per API key (429 with Retry-After)."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASK_MODEL_CALLS", "BodyLimitMiddleware", "Limiter", "units_for_model_calls"]

ASK_MODEL_CALLS = 5  # what one ask costs, about: query writer, analyst and critic over up to two rounds


def units_for_model_calls(calls: int, capacity: int) -> int:
    """Request units of a request making ``calls`` model calls: one per ``ASK_MODEL_CALLS``, at least one, at most
    the whole capacity (so the request can still run on an idle service)."""
    return max(1, min(capacity, math.ceil(calls / ASK_MODEL_CALLS)))


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


class Limiter:
    """At most ``limit`` request units in flight, and at most a tenant's quota for each tenant; the rest are refused
    at once (429), never queued. Runs on the event loop only: no lock needed."""

    def __init__(self, limit: int, tenant_limit: int | None = None) -> None:
        self.limit = limit
        self.tenant_limit = tenant_limit or limit
        self.in_flight = 0
        self.by_tenant: Counter[str] = Counter()

    def acquire(self, tenant: str = "", units: int = 1, tenant_limit: int | None = None) -> Callable[[], None]:
        """A release function (idempotent), or HTTP 429 when the global or the tenant's units are spent."""
        quota = tenant_limit or self.tenant_limit
        if self.in_flight + units > self.limit:
            raise HTTPException(
                429,
                f"busy: {self.in_flight} request units in flight (api.max_concurrency={self.limit}); retry shortly",
                headers={"Retry-After": "1"},
            )
        if self.by_tenant[tenant] + units > quota:
            raise HTTPException(
                429,
                f"this API key has {self.by_tenant[tenant]} request units in flight (its quota is {quota}); "
                "retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += units
        self.by_tenant[tenant] += units
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight -= units
                self.by_tenant[tenant] -= units
                if self.by_tenant[tenant] <= 0:
                    del self.by_tenant[tenant]

        return release
