"""The ``rolora`` command line: one module per command group, wired together in :mod:`rolora.cli.app`.

The CLI sits above the subsystems (retrieval, adapters, agents, evals) and imports them inside its commands only, so
``rolora --help`` loads no torch, transformers or faiss.
"""

from rolora.cli.app import app, main

__all__ = ["app", "main"]
