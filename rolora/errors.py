"""The two error roots of rolora.

``UserError``: the input, configuration or environment is wrong and the message says what to change.
``RoloraRuntimeError``: something failed while running; the message names the file, node or role that failed.
The CLI turns both into one line at the edge; library users catch ``RoloraError``.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "IndexError_",
    "ModelNotFoundError",
    "RoloraError",
    "RoloraRuntimeError",
    "UserError",
]


class RoloraError(Exception):
    """Base class of every error rolora raises on purpose."""


class UserError(RoloraError):
    """Bad input, configuration or environment; the message says what to change."""


class ConfigError(UserError):
    """A configuration key or value is invalid; the message names the key path and the fix."""


class ModelNotFoundError(UserError):
    """A model could not be resolved to local weights; the message names the install command."""


class IndexError_(UserError):
    """A persisted index is missing, damaged or built with another embedder; the message names the way out."""


class RoloraRuntimeError(RoloraError):
    """A step failed while running; the message names the file, node or role."""


class BackendUnavailableError(RoloraRuntimeError):
    """No model server could be reached after the bounded retries; a checkpointed run resumes once one is back."""
