"""rolora.agents: the LangGraph graph that routes each step of a question to the right role's adapter.

Public surface: :class:`Agent` (ask / aask / astream / resume), :func:`build_graph` (a compiled graph for other
LangGraph apps), :func:`make_backend`, the result types (:class:`Answer`, :class:`Citation`, :class:`TraceStep`).
"""

from .agent import ADAPTERS_BASE, Agent, build_graph, make_backend
from .types import Answer, Citation, PassageRef, TraceStep

__all__ = ["ADAPTERS_BASE", "Agent", "Answer", "Citation", "PassageRef", "TraceStep", "build_graph", "make_backend"]
