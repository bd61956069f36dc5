"""The graph's nodes, one module each: plain ``async (state, runtime) -> partial state`` functions.

The edges between them live in one place, :mod:`rolora.agents.graph`.
"""

from .analyse import analyse
from .critique import critique
from .finalise import finalise
from .retrieve import retrieve
from .route import route

__all__ = ["analyse", "critique", "finalise", "retrieve", "route"]
