"""One LLM call of a role through the serving interface, timed and recorded as a trace step."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from rolora import telemetry
from rolora.adapters.serving.base import GenerationRequest, GenerationResult
from rolora.errors import RoloraRuntimeError

from ..state import AgentContext
from ..types import TraceStep

__all__ = ["call_role", "parse_json"]


def parse_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models sometimes add prose around it), or None."""
    start = text.find("{")
    while start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
        except ValueError:
            start = text.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


async def call_role(
    ctx: AgentContext,
    role: str,
    adapter: str | None,
    messages: Sequence[dict[str, str]],
    schema: dict[str, Any],
    max_tokens: int,
    *,
    node: str,
    iteration: int,
    writer: Any = None,
) -> tuple[dict[str, Any] | None, TraceStep]:
    """Generate ``role``'s JSON with ``adapter`` (None = base model); one retry when the JSON does not parse.

    With a ``writer`` (LangGraph's stream writer) and a backend that can report deltas, the text is streamed as
    ``{"type": "token", "role": role, "text": ...}`` events while it is generated.
    """
    request = GenerationRequest(list(messages), adapter=adapter, max_tokens=max_tokens, json_schema=schema)
    started = time.perf_counter()
    retries = 0
    result: GenerationResult | None = None
    parsed: dict[str, Any] | None = None
    llm_s = 0.0
    with telemetry.span(f"rolora.llm.{role}", {"gen_ai.operation.name": "chat", "rolora.role": role}) as span:
        for attempt in range(2):
            t0 = time.perf_counter()
            try:
                result = await _generate(ctx, request, role, writer)
            except RoloraRuntimeError:
                raise
            except Exception as e:  # name the role and adapter that failed
                raise RoloraRuntimeError(f"{node}: the {role} call ({adapter or 'base model'}) failed: {e}") from e
            llm_s += time.perf_counter() - t0
            parsed = result.json if isinstance(result.json, dict) else parse_json(result.text)
            if parsed is not None:
                break
            retries = attempt + 1
        assert result is not None
        telemetry.set_attributes(
            span,
            {
                "gen_ai.request.model": result.adapter or "base",
                "gen_ai.usage.input_tokens": result.prompt_tokens,
                "gen_ai.usage.output_tokens": result.completion_tokens,
                "gen_ai.response.finish_reasons": [result.finish_reason] if result.finish_reason else None,
                "rolora.adapter": result.adapter or "base",
                "rolora.backend": result.backend,
                "rolora.retries": retries,
                "rolora.parsed": parsed is not None,
            },
        )
    step = TraceStep(
        node=node,
        role=role,
        adapter=result.adapter or "base",
        backend=result.backend,
        latency_s=time.perf_counter() - started,
        tokens_in=result.prompt_tokens,
        tokens_out=result.completion_tokens,
        retries=retries,
        iteration=iteration,
        detail={"llm_s": round(llm_s, 4), "finish_reason": result.finish_reason, "parsed": parsed is not None},
    )
    return parsed, step


async def _generate(ctx: AgentContext, request: GenerationRequest, role: str, writer: Any) -> GenerationResult:
    backend = ctx.backend
    submit = getattr(backend, "submit", None)
    if writer is not None and submit is not None:  # the in-process backend reports deltas through a callback
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str] = asyncio.Queue()

        def on_text(text: str | None) -> None:  # called on the backend's worker thread
            if text:
                loop.call_soon_threadsafe(deltas.put_nowait, text)

        future = asyncio.wrap_future(submit(request, on_text=on_text))
        while True:  # the writer is called here, inside the node's run context
            getter = asyncio.ensure_future(deltas.get())
            done, _ = await asyncio.wait({future, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                writer({"type": "token", "role": role, "text": getter.result()})
                continue
            getter.cancel()
            while not deltas.empty():
                writer({"type": "token", "role": role, "text": deltas.get_nowait()})
            return future.result()
    results = await backend.agenerate([request])
    return results[0]
