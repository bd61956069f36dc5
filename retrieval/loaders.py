"""Loaders: turn files into ``LoadedDocument`` text, one loader per suffix, registered by name.

Binary, empty, unreadable and oversized files are skipped with a reason; invalid UTF-8 is decoded with
replacement characters and flagged. One bad file never aborts an ingest.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .types import LoadedDocument, SkippedFile

__all__ = ["LOADERS", "LoadResult", "iter_corpus", "load_path", "register_loader"]


class _Skip(Exception):
    """Raised by a loader to skip a file with a reason."""


# A loader takes raw bytes (and the path, for messages) and returns (text, flags).
Loader = Callable[[bytes, Path], tuple[str, tuple[str, ...]]]
LOADERS: dict[str, Loader] = {}


def register_loader(*suffixes: str) -> Callable[[Loader], Loader]:
    """Register a loader for file suffixes (``".txt"``)."""

    def deco(fn: Loader) -> Loader:
        for s in suffixes:
            LOADERS[s.lower()] = fn
        return fn

    return deco


def _decode(raw: bytes) -> tuple[str, tuple[str, ...]]:
    if b"\x00" in raw[:8192]:
        raise _Skip("binary content (NUL bytes)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), ()
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), ("invalid-utf8",)


@register_loader(".txt", ".md", ".markdown", ".text")
def _load_text(raw: bytes, path: Path) -> tuple[str, tuple[str, ...]]:
    text, flags = _decode(raw)
    return text.replace("\r\n", "\n").replace("\r", "\n"), flags


@register_loader(".html", ".htm")
def _load_html(raw: bytes, path: Path) -> tuple[str, tuple[str, ...]]:
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    text, flags = _decode(raw)
    tree = HTMLParser(text)
    tree.strip_tags(["script", "style", "noscript", "template", "head"])
    root = tree.body or tree.root
    visible = root.text(separator="\n") if root is not None else ""
    lines = [ln.strip() for ln in visible.splitlines()]
    return "\n".join(ln for ln in lines if ln), flags


@register_loader(".pdf")
def _load_pdf(raw: bytes, path: Path) -> tuple[str, tuple[str, ...]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as e:
        raise _Skip(f"unreadable PDF ({e})") from e
    return "\n\n".join(p.strip() for p in pages), ()


@register_loader(".docx")
def _load_docx(raw: bytes, path: Path) -> tuple[str, tuple[str, ...]]:
    import zipfile

    import docx

    try:
        document = docx.Document(io.BytesIO(raw))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise _Skip(f"unreadable DOCX ({e})") from e
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(parts), ()


@dataclass
class LoadResult:
    documents: list[LoadedDocument]
    skipped: list[SkippedFile]


def _doc_id(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def _load_jsonl(raw: bytes, path: Path) -> LoadResult:
    docs: list[LoadedDocument] = []
    skipped: list[SkippedFile] = []
    text, flags = _decode(raw)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec: Any = json.loads(line)
        except json.JSONDecodeError as e:
            skipped.append(SkippedFile(where, f"invalid JSON ({e.msg}); each line must be one JSON object"))
            continue
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("id"), str | int)
            or not isinstance(rec.get("text"), str)
        ):
            skipped.append(SkippedFile(where, 'each line needs {"id": str, "text": str, "metadata": {...}}'))
            continue
        if not rec["text"].strip():
            skipped.append(SkippedFile(where, "empty text"))
            continue
        meta = rec.get("metadata") or {}
        if not isinstance(meta, dict):
            skipped.append(SkippedFile(where, "'metadata' must be an object"))
            continue
        digest = hashlib.sha256(line.encode("utf-8")).hexdigest()
        docs.append(LoadedDocument(str(rec["id"]), rec["text"], str(path), digest, {**meta, "line": n}, flags))
    return LoadResult(docs, skipped)


def load_path(path: Path, root: Path, max_bytes: int) -> LoadResult:
    """Load one file (a JSONL file may hold many documents). Never raises for a bad file: it is skipped."""
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if size == 0:
            return LoadResult([], [SkippedFile(str(path), "empty file")])
        if size > max_bytes:
            return LoadResult(
                [], [SkippedFile(str(path), f"larger than {max_bytes / 1e6:.0f} MB; raise retrieval.max_file_mb")]
            )
        raw = path.read_bytes()
    except OSError as e:
        return LoadResult([], [SkippedFile(str(path), f"unreadable ({e.strerror or e})")])
    try:
        if suffix == ".jsonl":
            return _load_jsonl(raw, path)
        loader = LOADERS.get(suffix)
        if loader is None:
            return LoadResult([], [SkippedFile(str(path), f"unsupported type '{suffix or '(none)'}'")])
        text, flags = loader(raw, path)
    except _Skip as e:
        return LoadResult([], [SkippedFile(str(path), str(e))])
    except Exception as e:  # a third-party parser failing on one file must not abort the ingest
        return LoadResult([], [SkippedFile(str(path), f"could not parse ({type(e).__name__}: {e})")])
    if not text.strip():
        return LoadResult([], [SkippedFile(str(path), "no text content")])
    meta = {"source": path.name, "suffix": suffix}
    digest = hashlib.sha256(raw).hexdigest()
    return LoadResult([LoadedDocument(_doc_id(path, root), text, str(path), digest, meta, flags)], [])


def _matches(rel: str, patterns: list[str]) -> bool:
    """Glob match against the relative path or the file name; ``**/x`` also matches ``x`` at the top."""
    name = rel.rsplit("/", 1)[-1]
    for p in patterns:
        for q in (p, p[3:]) if p.startswith("**/") else (p,):
            if fnmatch.fnmatch(rel, q) or fnmatch.fnmatch(name, q):
                return True
    return False


def iter_corpus(root: Path, include: list[str], exclude: list[str]) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself) matching include globs and no exclude glob, sorted."""
    if root.is_file():
        yield root
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        if include and not _matches(rel, include):
            continue
        if exclude and _matches(rel, exclude):
            continue
        yield path
