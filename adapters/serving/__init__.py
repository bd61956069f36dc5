"""Serving per-role adapters: the ``Backend`` protocol, the in-process PEFT backend and the vLLM backend."""

from .base import (
    BASE,
    AdapterResolver,
    Backend,
    BackendBase,
    DirectoryAdapters,
    GenerationRequest,
    GenerationResult,
    check_adapter_folder,
    parse_adapter_ref,
)

__all__ = [
    "BASE",
    "AdapterResolver",
    "Backend",
    "BackendBase",
    "DirectoryAdapters",
    "GenerationRequest",
    "GenerationResult",
    "check_adapter_folder",
    "parse_adapter_ref",
]
