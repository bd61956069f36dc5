"""The HTTP service agent apps embed (``rolora serve api``): FastAPI over the agent, the retrievers and analyze.

It sits above the subsystems like the CLI does; the core modules of :mod:`rolora` never import it.
"""

from rolora.service.app import (
    AnalyzeRequest,
    AskRequest,
    BodyLimitMiddleware,
    SearchRequest,
    ServiceAgent,
    create_app,
    resolve_api_keys,
    serve,
)

__all__ = [
    "AnalyzeRequest",
    "AskRequest",
    "BodyLimitMiddleware",
    "SearchRequest",
    "ServiceAgent",
    "create_app",
    "resolve_api_keys",
    "serve",
]
