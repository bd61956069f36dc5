"""rolora: per-role LoRA experts for agentic RAG.

Subpackages: ``rolora.retrieval`` (ingest, hybrid search, cited passages), ``rolora.adapters`` (per-role LoRA
training, registry, serving), ``rolora.agents`` (the LangGraph graph), ``rolora.evals`` (RAG eval suites).
Importing ``rolora`` is light: heavy libraries load when first used (``rolora.build_graph`` imports the graph).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "build_graph"]


def build_graph(config: Any, **kwargs: Any) -> Any:
    """A compiled LangGraph graph for ``config`` (see :func:`rolora.agents.build_graph`)."""
    from rolora.agents import build_graph as _build

    return _build(config, **kwargs)
