"""``Agent``: the graph with its backend, retrievers, adapters and checkpointer, for apps, the CLI, the API, evals.

```python
from rolora.agents import Agent
from rolora.config import load_config

agent = Agent.from_config(load_config("rolora.yaml"))
answer = agent.ask("Which law governs the agreement?", domain="contracts")
print(answer.answer, [c.citation for c in answer.citations])
agent.close()
```
Runs execute on the agent's own event-loop thread, so the sync (``ask``) and async (``aask``, ``astream``) entry
points share one SQLite checkpointer: a run killed mid-way resumes with ``resume(thread_id)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rolora import telemetry
from rolora.config import Config
from rolora.errors import UserError
from rolora.roles import trained_format

from .graph import compile_graph
from .runs import CheckpointerKind, PruneReport, open_checkpointer, prune_runs
from .state import ROLES, AgentContext, new_run
from .types import Answer

__all__ = ["ADAPTERS_BASE", "Agent", "build_graph", "make_backend"]

log = logging.getLogger("rolora.agents")
T = TypeVar("T")

ADAPTERS_BASE: dict[str, str | None] = {role: None for role in ROLES}  # every role on the base model


def make_backend(config: Config) -> Any:
    """The serving backend named by ``config.backend`` with the adapter registry as its resolver."""
    from rolora.adapters.registry import Registry
    from rolora.models import resolve_generator

    base_dir = resolve_generator(config.models.generator, config.home_dir)
    registry = Registry.from_config(config, base_dir)
    if config.backend.kind == "vllm":
        from rolora.adapters.serving.vllm_backend import VLLMBackend

        return VLLMBackend.from_config(config, registry)
    from rolora.adapters.serving.inprocess import InProcessBackend

    # from_config: every backend.* setting (threads, quantize, prefix_cache) reaches the backend
    return InProcessBackend.from_config(config, registry, batch_window_ms=10)


class Agent:
    """The compiled graph plus what its nodes need. Thread-safe; share one per process."""

    def __init__(
        self,
        config: Config,
        backend: Any,
        *,
        adapters: Mapping[str, str | None] | None = None,
        retrieval_mode: str | None = None,
        checkpointer: CheckpointerKind | None = None,
        use_critic: bool | None = None,
        max_iterations: int | None = None,
        embedder: Any = None,
        owns_backend: bool = False,
        compile: bool = True,
    ) -> None:
        unknown = set(adapters or {}) - set(ROLES)
        if unknown:
            raise UserError(f"adapters: unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")
        if retrieval_mode not in (None, "hybrid", "dense", "lexical"):
            raise UserError(f"retrieval_mode must be hybrid, dense or lexical (got {retrieval_mode!r})")
        self.config = config
        self.backend = backend
        self._owns_backend = owns_backend
        self._overrides = dict(adapters or {})
        self._retrievers: dict[str, Any] = {}
        self._embedder = embedder  # shared by every domain's retriever (None: loaded once per retriever)
        self._lock = threading.Lock()
        self._registry: Any = None
        self._warned: set[tuple[str, str]] = set()
        self._formats: dict[str, str] = {}
        settings = config.agent
        if max_iterations is not None:
            settings = settings.model_copy(update={"max_iterations": max_iterations})
        self.settings = settings
        self.context = AgentContext(
            config=config,
            backend=backend,
            retriever=self.retriever,
            role_adapters=self.role_adapters,
            retrieval_mode=retrieval_mode,
            use_critic=settings.use_critic if use_critic is None else use_critic,
            settings=settings,
            analyst_format=self.analyst_format,
        )
        telemetry.configure(config.telemetry)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rolora-agent", daemon=True)
        self._thread.start()
        self._checkpointer_kind: CheckpointerKind = checkpointer or settings.checkpointer
        self._saver: Any = None
        self._stack = contextlib.AsyncExitStack()  # the checkpointer's connection, closed by close()
        self.graph: Any = self._run(self._compile()) if compile else None  # None: only subgraph() is used

    @classmethod
    def from_config(cls, config: Config, *, backend: Any = None, **kwargs: Any) -> Agent:
        """An agent on ``backend`` (shared, not closed by :meth:`close`), or on a new one from ``config.backend``."""
        if backend is None:
            return cls(config, make_backend(config), owns_backend=True, **kwargs)
        return cls(config, backend, **kwargs)

    # -- dependencies --------------------------------------------------------------------------------------
    def retriever(self, domain: str) -> Any:
        """The domain's retriever (opened once; refuses a domain that is not configured or not ingested)."""
        with self._lock:
            r = self._retrievers.get(domain)
            if r is None:
                from rolora.retrieval import Retriever

                self.config.domain(domain)
                r = Retriever.open(domain, self.config, embedder=self._embedder)
                self._retrievers[domain] = r
            return r

    def role_adapter(self, domain: str, role: str) -> str | None:
        """``name@version`` serving ``role`` in ``domain``, or None for the base model."""
        return self.role_adapters(domain).get(role)

    def role_adapters(self, domain: str) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for role in ROLES:
            if role in self._overrides:  # taken as given: the backend resolves it and the trace names what served
                out[role] = self._overrides[role] or None
                continue
            binding = self.config.domain(domain).roles.get(role)  # type: ignore[call-overload]
            if binding is None or binding.adapter is None:
                out[role] = None
                continue
            try:
                out[role] = self._registry_obj().role_adapter(self.config, domain, role)
            except UserError as e:  # bound but not trained/promoted yet: the base model serves, the trace says so
                if (domain, role) not in self._warned:
                    self._warned.add((domain, role))
                    log.warning("%s; using the base model for %s", e, role)
                out[role] = None
        return out

    def analyst_format(self, ref: str) -> str:
        """The output format the analyst adapter ``ref`` was trained on: its manifest's
        ``training_config.analyst_format`` (the registry's record, else the ``manifest.json`` of the folder the
        backend serves it from, as for a shipped adapter); "quote" for an adapter trained before there was a choice;
        the configured ``agent.analyst_format`` when neither knows the adapter."""
        with self._lock:
            cached = self._formats.get(ref)
        if cached is not None:
            return cached
        training: dict[str, Any] | None = None
        try:
            training = self._registry_obj().show(ref).training_config
        except UserError:
            folder_of = getattr(self.backend, "adapter_folder", None)
            try:
                folder = folder_of(ref) if folder_of is not None else None
                if folder is not None and (Path(folder) / "manifest.json").is_file():
                    manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
                    training = dict(manifest.get("training_config") or {})
            except (UserError, OSError, ValueError) as e:
                log.warning("adapter %s: manifest.json unreadable (%s); asked in agent.analyst_format", ref, e)
        fmt = self.settings.analyst_format if training is None else trained_format(training)
        with self._lock:
            self._formats[ref] = fmt
        return fmt

    def _registry_obj(self) -> Any:
        if self._registry is None:
            from rolora.adapters.registry import Registry
            from rolora.models import resolve_generator

            self._registry = Registry.from_config(
                self.config, resolve_generator(self.config.models.generator, self.config.home_dir)
            )
        return self._registry

    # -- running ---------------------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _compile(self) -> Any:
        saver = await self._stack.enter_async_context(open_checkpointer(self.config, self._checkpointer_kind))
        self._saver = saver
        return compile_graph(
            self.context, checkpointer=saver, interrupt_before_finalise=self.settings.interrupt_before_finalise
        )

    def _run_config(self, thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": 8 + 4 * self.settings.max_iterations}

    async def _invoke(self, inputs: dict[str, Any] | None, thread_id: str, parent: Any = None) -> Answer:
        durability = "sync" if self._saver is not None else None
        with telemetry.span("rolora.ask", _run_attributes(inputs, thread_id), parent) as span:
            state = await self.graph.ainvoke(
                inputs, self._run_config(thread_id), context=self.context, durability=durability
            )
            answer = self._answer(state, thread_id)
            telemetry.set_attributes(span, _answer_attributes(answer.model_dump()))
            return answer

    def _answer(self, state: Mapping[str, Any], thread_id: str) -> Answer:
        final = state.get("final")
        if not final:
            raise UserError(
                f"run {thread_id} is paused before finalise (human review); continue it with resume('{thread_id}')"
            )
        return Answer.model_validate({**final, "thread_id": thread_id})

    def _inputs(
        self,
        question: str,
        domain: str | None,
        domains: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        question = question.strip()
        if not question:
            raise UserError("the question is empty")
        for d in [domain] if domain is not None else list(domains or []):
            self.config.domain(d)
        if domain is not None and domains is not None and domain not in domains:
            raise UserError(f"domain '{domain}' is not one of the allowed domains ({', '.join(domains)})")
        if doc_ids and domain is not None:  # routed runs check them in the routed domain's retrieve step
            self.retriever(domain).check_doc_ids(list(doc_ids))
        return new_run(question, domain, list(domains or []) or None, list(doc_ids or []) or None)

    def ask(
        self,
        question: str,
        domain: str | None = None,
        *,
        thread_id: str | None = None,
        domains: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> Answer:
        """Answer ``question``; ``domain=None`` routes it (among ``domains`` when given, e.g. a tenant's).
        ``doc_ids`` restricts retrieval to those documents (otherwise the contract the question names, if the
        retriever resolves one, else the whole domain). The run is checkpointed under ``thread_id``."""
        tid = thread_id or uuid.uuid4().hex
        inputs = self._inputs(question, domain, domains, doc_ids)
        return self._run(self._invoke(inputs, tid, telemetry.caller_context()))

    async def aask(
        self,
        question: str,
        domain: str | None = None,
        *,
        thread_id: str | None = None,
        domains: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> Answer:
        tid = thread_id or uuid.uuid4().hex
        inputs = self._inputs(question, domain, domains, doc_ids)
        return await self._on_loop(self._invoke(inputs, tid, telemetry.caller_context()))

    def resume(self, thread_id: str) -> Answer:
        """Continue a run from its last checkpoint (after a crash, a kill or a human-review pause)."""
        return self._run(self._resume(thread_id, telemetry.caller_context()))

    async def _resume(self, thread_id: str, parent: Any = None) -> Answer:
        snapshot = await self.graph.aget_state(self._run_config(thread_id))
        if not snapshot.values:
            raise UserError(f"no run with thread id '{thread_id}' in the checkpointer; start it with ask()")
        if not snapshot.next and snapshot.values.get("final"):
            return self._answer(snapshot.values, thread_id)
        return await self._invoke(None, thread_id, parent)

    async def aresume(self, thread_id: str) -> Answer:
        return await self._on_loop(self._resume(thread_id, telemetry.caller_context()))

    async def _state(self, thread_id: str) -> dict[str, Any]:
        snap = await self.graph.aget_state(self._run_config(thread_id))
        return {"values": dict(snap.values), "next": list(snap.next)}

    def state(self, thread_id: str) -> dict[str, Any]:
        """The checkpointed state of a run (``values`` and the nodes still ``next``; empty values: no such run)."""
        return self._run(self._state(thread_id))

    async def astate(self, thread_id: str) -> dict[str, Any]:
        return await self._on_loop(self._state(thread_id))

    async def astream(
        self,
        question: str | None,
        domain: str | None = None,
        *,
        thread_id: str | None = None,
        domains: Sequence[str] | None = None,
        doc_ids: Sequence[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Events as the run goes: ``{"type": "step", "step": {...}}`` per trace step, ``{"type": "token", ...}``
        while the analyst writes, ``{"type": "passages", ...}`` after retrieval, then ``{"type": "answer", ...}``
        (or ``{"type": "interrupt", ...}`` when paused for review). ``question=None`` resumes ``thread_id``."""
        tid = thread_id or uuid.uuid4().hex
        inputs = None if question is None else self._inputs(question, domain, domains, doc_ids)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        caller = asyncio.get_running_loop()

        def put(item: dict[str, Any] | None) -> None:
            caller.call_soon_threadsafe(queue.put_nowait, item)

        parent = telemetry.caller_context()

        async def produce() -> None:
            with telemetry.span("rolora.ask", _run_attributes(inputs, tid), parent) as span:
                await stream(span)

        async def stream(span: Any) -> None:
            try:
                if inputs is None and not (await self.graph.aget_state(self._run_config(tid))).values:
                    raise UserError(f"no run with thread id '{tid}' in the checkpointer; start it with a question")
                durability = "sync" if self._saver is not None else None
                async for mode, chunk in self.graph.astream(
                    inputs,
                    self._run_config(tid),
                    context=self.context,
                    stream_mode=["updates", "custom"],
                    durability=durability,
                ):
                    if mode == "custom":
                        put(dict(chunk))
                        continue
                    for node, update in (chunk or {}).items():
                        for step in (update or {}).get("trace", []) if isinstance(update, dict) else []:
                            put({"type": "step", "node": node, "thread_id": tid, "step": step})
                snap = await self.graph.aget_state(self._run_config(tid))
                final = snap.values.get("final")
                if final and not snap.next:
                    telemetry.set_attributes(span, _answer_attributes(final))
                    put({"type": "answer", "thread_id": tid, "answer": {**final, "thread_id": tid}})
                else:
                    put({"type": "interrupt", "thread_id": tid, "next": list(snap.next)})
            except Exception as e:  # surfaced to the consumer
                span.record_exception(e)
                put({"type": "error", "thread_id": tid, "error": str(e), "exception": e})
            finally:
                put(None)

        fut = asyncio.run_coroutine_threadsafe(produce(), self._loop)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if item.get("type") == "error":
                    raise item.pop("exception")
                yield item
        finally:
            if not fut.done():
                fut.cancel()

    async def aprune_runs(self, older_than_days: float | None = None, keep: int | None = None) -> PruneReport:
        """Delete old runs from the checkpointer (see :mod:`rolora.agents.runs`); defaults: the config's
        ``agent.runs_retention_days`` and ``agent.runs_keep``."""
        days = self.settings.runs_retention_days if older_than_days is None else older_than_days
        keep = self.settings.runs_keep if keep is None else keep
        if self._saver is None:
            return PruneReport(0, 0, None)
        return await self._on_loop(prune_runs(self._saver, older_than_days=days, keep=keep))

    def subgraph(self, checkpointer: Any = None) -> Any:
        """The graph compiled on this agent's dependencies, for use inside another LangGraph app (as a node or a
        subgraph; it then checkpoints with the parent's checkpointer). Valid until :meth:`close`."""
        return compile_graph(self.context, checkpointer=checkpointer)

    def as_tool(self, domain: str | None = None) -> Any:
        """A LangChain tool (``ask_contracts``-style) that answers with cited spans, for other agents to call."""
        from langchain_core.tools import StructuredTool

        def run(question: str) -> str:
            a = self.ask(question, domain)
            cites = "; ".join(f'{c.citation} "{c.quote}"' for c in a.citations)
            return f"{a.answer}\nCitations: {cites or 'none'}"

        async def arun(question: str) -> str:
            a = await self.aask(question, domain)
            cites = "; ".join(f'{c.citation} "{c.quote}"' for c in a.citations)
            return f"{a.answer}\nCitations: {cites or 'none'}"

        name = f"ask_{domain or 'rolora'}".replace("-", "_")
        desc = (self.config.domains[domain].description if domain else "") or "contracts and other corpora"
        return StructuredTool.from_function(
            func=run,
            coroutine=arun,
            name=name,
            description=f"Answer a question from {desc}, with citations to exact source spans.",
        )

    def close(self) -> None:
        async def shutdown() -> None:
            await self._stack.aclose()

        if self._loop.is_running():
            try:
                self._run(shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
        for r in self._retrievers.values():
            r.close()
        telemetry.flush()
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_attributes(inputs: Mapping[str, Any] | None, thread_id: str) -> dict[str, Any]:
    if inputs is None:
        return {"rolora.thread_id": thread_id, "rolora.resumed": True}
    return {
        "rolora.thread_id": thread_id,
        "rolora.question_chars": len(inputs["question"]),
        "rolora.requested_domain": inputs.get("domain"),
    }


def _answer_attributes(answer: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rolora.domain": answer.get("domain"),
        "rolora.not_found": bool(answer.get("not_found")),
        "rolora.citations": len(answer.get("citations") or []),
        "rolora.iterations": answer.get("iterations"),
    }


def build_graph(config: Config, *, backend: Any = None, checkpointer: Any = None, **agent_kwargs: Any) -> Any:
    """A compiled LangGraph graph answering ``{"question": ..., "domain": ...}`` with ``state["final"]`` an
    :class:`Answer` dict; its dependencies are bound, so it runs on its own or as a subgraph of another app.

    Its nodes are async: run it (or the app it is part of) with ``ainvoke``/``astream``. The graph is compiled once.
    Its agent (retrievers, and the backend when none is given) is closed when the graph is garbage-collected or the
    interpreter exits; for an explicit lifetime use ``with Agent.from_config(config) as agent: agent.subgraph()``."""
    agent = Agent.from_config(config, backend=backend, checkpointer="none", compile=False, **agent_kwargs)
    graph = agent.subgraph(checkpointer)
    weakref.finalize(graph, agent.close)
    return graph
