"""The serving interface every LLM step calls: one small Protocol, two real backends (in-process, vLLM).

A request names the adapter (``"name@version"``, ``"name"`` for the latest, or ``None`` for the base model),
carries chat messages, sampling parameters, max tokens, stop strings and an optional JSON schema. A result
carries the text, the parsed JSON (when a schema was given), token counts, finish reason, latency and the
adapter that actually served it. The async core is written once; ``generate`` is a thin sync wrapper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from rolora.errors import RoloraRuntimeError, UserError

__all__ = [
    "BASE",
    "JSON_SEPARATORS",
    "MANIFEST",
    "AdapterResolver",
    "Backend",
    "BackendBase",
    "DirectoryAdapters",
    "GenerationRequest",
    "GenerationResult",
    "json_schema_grammar",
    "parse_adapter_ref",
    "verify_adapter_files",
]

BASE = "__base__"  # the adapter name PEFT uses for "no adapter" in a mixed batch
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


# How structured output is written, on every backend: json.dumps' separators and no other whitespace (the format the
# role adapters are trained on), properties in the schema's own order (the order of the training targets).
JSON_SEPARATORS = (", ", ": ")
GRAMMAR_CACHE_SIZE = 256  # distinct schemas kept compiled; a service's schemas repeat, an unbounded cache would not


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The xgrammar EBNF for ``schema`` in that format; what the vLLM backend sends as ``structured_outputs.grammar``
    so that a server decodes exactly as the in-process backend does. Cached (LRU) by the schema's JSON."""
    return _grammar_of(json.dumps(schema))


@functools.lru_cache(maxsize=GRAMMAR_CACHE_SIZE)
def _grammar_of(key: str) -> str:
    import xgrammar as xgr

    try:
        grammar = xgr.Grammar.from_json_schema(key, any_whitespace=False, separators=JSON_SEPARATORS)
    except Exception as e:
        raise UserError(f"json_schema is not a valid JSON schema: {e}") from e
    return str(grammar)


def parse_adapter_ref(ref: str) -> tuple[str, int | None]:
    """``"contracts-analyst@3"`` -> ``("contracts-analyst", 3)``; ``"contracts-analyst"`` -> ``(…, None)``."""
    name, _, version = ref.partition("@")
    if not _NAME.match(name) or ".." in name:
        raise UserError(f"adapter name {name!r} is invalid: use letters, digits, '_' or '-' (max 64), no '.' or '/'")
    if version and not version.isdigit():
        raise UserError(f"adapter version in {ref!r} must be a number, as in name@3")
    return name, int(version) if version else None


@dataclass(frozen=True)
class GenerationRequest:
    messages: Sequence[dict[str, str]]
    adapter: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    seed: int | None = None
    # at least this many tokens before the end-of-sequence token may end the reply (0: none); for benchmarks that
    # compare equal work (vLLM's min_tokens); not with json_schema, whose grammar decides where the reply ends
    min_tokens: int = 0
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if not self.messages:
            raise UserError("a generation request needs at least one chat message")
        for m in self.messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError("each chat message must be {'role': ..., 'content': ...}")
        if self.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise UserError(f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if self.min_tokens and self.json_schema is not None:
            raise UserError("min_tokens cannot be combined with json_schema: the grammar decides where the reply ends")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.adapter is not None:
            parse_adapter_ref(self.adapter)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    json: Any | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    latency_s: float
    adapter: str | None  # "name@version" that served it, None for the base model
    backend: str
    request_id: str = ""


@runtime_checkable
class Backend(Protocol):
    """What the agent graph and the evals call; implemented by the in-process and the vLLM backends."""

    name: str

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]: ...

    def close(self) -> None: ...


class BackendBase:
    """Shared sync wrapper over the async core."""

    name = "base"
    _resolver: AdapterResolver | None = None  # set by backends that resolve adapter refs to folders

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise NotImplementedError

    def adapter_folder(self, ref: str) -> Path | None:
        """The folder that serves adapter ``ref`` (its weights and, when registered or shipped, its
        ``manifest.json``); None when this backend resolves no folders."""
        return None if self._resolver is None else self._resolver(ref)[1]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sync wrapper: runs the async core, also from inside a running event loop (in a helper thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()

    def close(self) -> None:
        return None


# Resolves "name" or "name@version" to (canonical "name@version", folder). The registry implements it too.
AdapterResolver = Callable[[str], tuple[str, Path]]


class DirectoryAdapters:
    """Adapters as folders ``root/name@version`` (PEFT layout); ``name`` alone means the highest version.

    Only safetensors weights are accepted: ``.bin``/``.pt`` adapters are refused (pickle risk).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        out = []
        for p in self.root.glob(f"{name}@*"):
            v = p.name.rpartition("@")[2]
            if v.isdigit() and p.is_dir():
                out.append(int(v))
        return sorted(out)

    def __call__(self, ref: str) -> tuple[str, Path]:
        name, version = parse_adapter_ref(ref)
        if version is None:
            versions = self.versions(name)
            if not versions:
                plain = self.root / name
                if plain.is_dir():
                    return check_adapter_folder(name, plain), plain
                raise UserError(f"adapter '{name}' not found under {self.root}; train it or check the name")
            version = versions[-1]
        folder = self.root / f"{name}@{version}"
        if not folder.is_dir():
            raise UserError(f"adapter '{name}@{version}' not found under {self.root}")
        return check_adapter_folder(f"{name}@{version}", folder), folder


def check_adapter_folder(ref: str, folder: Path) -> str:
    """Refuse folders that are not a safetensors PEFT adapter; returns ``ref`` unchanged."""
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"adapter '{ref}': {folder} has no adapter_config.json (not a PEFT adapter folder)")
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if pickled:
            raise UserError(
                f"adapter '{ref}': {', '.join(pickled)} is a pickle, which rolora never loads; "
                "re-save it with safetensors (save_pretrained(safe_serialization=True))"
            )
        raise UserError(f"adapter '{ref}': {folder} has no adapter_model.safetensors")
    return ref


MANIFEST = "manifest.json"  # the registry's record beside each adapter; ``files`` maps file name -> sha256
_HASHES: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()  # (path, inode, size, mtime, ctime) -> sha
_HASHES_MAX = 256
_HASHES_LOCK = threading.Lock()


def _sha256(path: Path) -> str:
    """sha256 of ``path``, computed again whenever the file's inode, size, mtime or ctime differ from the last time
    (any write changes ctime, which no user can set back), so an unchanged adapter is not re-read on every load."""
    from rolora.models import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASHES_LOCK:
        if key in _HASHES:
            _HASHES.move_to_end(key)
            return _HASHES[key]
    sha = sha256_file(path)
    with _HASHES_LOCK:
        _HASHES[key] = sha
        while len(_HASHES) > _HASHES_MAX:
            _HASHES.popitem(last=False)
    return sha


def verify_adapter_files(ref: str, folder: Path) -> None:
    """Refuse an adapter whose files are not the bytes recorded when it was registered.

    Reads ``folder/manifest.json`` (written by the registry); a folder without one (a plain PEFT folder served
    through ``DirectoryAdapters``) has nothing recorded and passes. A changed or missing file raises a one-line
    ``RoloraRuntimeError`` naming the adapter and the command that registers it again.
    """
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        recorded = dict(data.get("files") or {})
    except (OSError, ValueError, AttributeError) as e:
        raise RoloraRuntimeError(f"adapter '{ref}': {manifest} is unreadable ({e}); re-register the adapter") from e
    role, domain = data.get("role") or "ROLE", data.get("domain") or "DOMAIN"
    fix = (
        f"re-register it with `rolora train --role {role} --domain {domain}` (a new version), or restore the file from "
        "the training output"
    )
    for name, expected in sorted(recorded.items()):
        path = Path(folder) / name
        if os.sep in name or name.startswith(".."):
            raise RoloraRuntimeError(f"adapter '{ref}': {manifest} records a file outside its folder ({name!r})")
        if not path.is_file():
            raise RoloraRuntimeError(f"adapter '{ref}': {name} is missing from {folder}; {fix}")
        actual = _sha256(path)
        if actual != expected:
            raise RoloraRuntimeError(
                f"adapter '{ref}': {name} has sha256 {actual[:12]}…, not the {str(expected)[:12]}… recorded when it "
                f"was registered (changed since); {fix}"
            )
