"""Per-role training data built from a domain corpus."""

from . import builders as _builders  # noqa: F401  (registers the built-in builders)
from .base import (
    BUILDERS,
    BuildContext,
    DataBuilder,
    DataCard,
    Example,
    QARow,
    build_role_splits,
    dataset_digest,
    doc_split,
    load_qa,
    save_dataset,
)

__all__ = [
    "BUILDERS",
    "BuildContext",
    "DataBuilder",
    "DataCard",
    "Example",
    "QARow",
    "build_role_splits",
    "dataset_digest",
    "doc_split",
    "load_qa",
    "save_dataset",
]
