"""rolora: per-role LoRA experts for agentic RAG.

Subpackages: ``rolora.retrieval`` (ingest, hybrid search, cited passages), ``rolora.adapters`` (per-role LoRA
training, registry, serving), ``rolora.agents`` (the LangGraph graph), ``rolora.evals`` (RAG eval suites).
Importing ``rolora`` is light: heavy libraries load when first used.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
