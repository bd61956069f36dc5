"""A langchain-core ``BaseRetriever`` wrapper, for agent apps built on LangChain or LangGraph."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

__all__ = ["RoloraLangchainRetriever"]


class RoloraLangchainRetriever(BaseRetriever):
    """Wraps ``rolora.retrieval.Retriever``; each Document's metadata carries the citation span."""

    retriever: Any
    k: int = 5
    mode: str | None = None
    filters: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        passages = self.retriever.search(query, k=self.k, mode=self.mode, filters=self.filters)
        return [
            Document(
                page_content=p.text,
                metadata={
                    **p.metadata,
                    "doc_id": p.doc_id,
                    "start": p.start,
                    "end": p.end,
                    "heading_path": p.heading_path,
                    "chunk_id": p.chunk_id,
                    "score": p.score,
                    "citation": p.citation,
                },
            )
            for p in passages
        ]
