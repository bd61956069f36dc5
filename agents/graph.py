"""The graph's wiring, all in one place: route → retrieve → analyse → critique → (retrieve | analyse | finalise).

```
START → route ─┬→ retrieve → analyse → critique ─┬→ finalise → END
               └→ finalise (ask which domain)     ├→ retrieve (critic rejected: new queries with feedback)
                                                  └→ analyse  (citations failed: answer again with feedback)
```
Nodes read their dependencies from LangGraph's run-time context (:class:`~rolora.agents.state.AgentContext`).
``build_graph(config)`` binds a default context, so the compiled graph also runs on its own or as a subgraph of
another LangGraph app without passing ``context=``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from rolora import telemetry

from .nodes import analyse, critique, finalise, retrieve, route
from .state import AgentContext, AgentState

__all__ = ["compile_graph"]

Node = Callable[[AgentState, Runtime[AgentContext]], Awaitable[dict[str, Any]]]


def _with_default_context(node: Node, default: AgentContext | None) -> Node:
    """The node with the default context bound, in an OpenTelemetry span carrying its trace step's figures."""

    async def run(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        if runtime.context is None:
            if default is None:
                raise ValueError("the rolora graph needs context=AgentContext(...) or build_graph(config)")
            runtime = dataclasses.replace(runtime, context=default)
        with telemetry.span(f"rolora.{node.__name__}", {"rolora.iteration": state.get("iteration", 0)}) as span:
            update = await node(state, runtime)
            for step in update.get("trace", []):
                if not step.get("role"):  # the node's own step (model calls have their own spans)
                    detail = {f"rolora.{k}": v for k, v in (step.get("detail") or {}).items()}
                    telemetry.set_attributes(span, {**detail, "rolora.domain": update.get("domain")})
            return update

    run.__name__ = node.__name__
    return run


def _after_route(state: AgentState) -> str:
    return state.get("next", "retrieve")


def _after_critique(state: AgentState) -> str:
    return state.get("next", "finalise")


def compile_graph(
    context: AgentContext | None = None, *, checkpointer: Any = None, interrupt_before_finalise: bool = False
) -> Any:
    """The compiled ``StateGraph`` (``CompiledStateGraph``); ``context`` is used when a run passes none."""
    g: StateGraph[AgentState, AgentContext, AgentState, AgentState] = StateGraph(
        AgentState, context_schema=AgentContext
    )
    for node in (route, retrieve, analyse, critique, finalise):
        g.add_node(node.__name__, _with_default_context(node, context))  # type: ignore[call-overload]
    g.add_edge(START, "route")
    g.add_conditional_edges("route", _after_route, {"retrieve": "retrieve", "finalise": "finalise"})
    g.add_edge("retrieve", "analyse")
    g.add_edge("analyse", "critique")
    g.add_conditional_edges(
        "critique", _after_critique, {"retrieve": "retrieve", "analyse": "analyse", "finalise": "finalise"}
    )
    g.add_edge("finalise", END)
    return g.compile(
        checkpointer=checkpointer,
        interrupt_before=["finalise"] if interrupt_before_finalise else None,
        name="rolora",
    )
