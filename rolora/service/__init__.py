"""The HTTP service agent apps embed (``rolora serve api``): FastAPI over the agent, the retrievers and analyze.

It sits above the subsystems like the CLI does; the core modules of :mod:`rolora` never import it.
"""

from rolora.service.app import AnalyzeRequest, AskRequest, SearchRequest, ServiceAgent, create_app, serve
from rolora.service.limits import BodyLimitMiddleware, Limiter
from rolora.service.tenants import Tenant, resolve_api_keys

__all__ = [
    "AnalyzeRequest",
    "AskRequest",
    "BodyLimitMiddleware",
    "Limiter",
    "SearchRequest",
    "ServiceAgent",
    "Tenant",
    "create_app",
    "resolve_api_keys",
    "serve",
]
