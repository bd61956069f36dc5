"""Tuned embedders: a versioned registry of fine-tuned sentence-transformers folders, with data cards and gates.

Layout under ``<home>/embedders``::

    contracts-retriever@1/  config.json  model.safetensors  tokenizer files  modules.json  1_Pooling/…  manifest.json
    contracts-retriever@2/  ...

A configured embedder names one as ``tuned:<name>`` (its latest *promoted* version) or ``tuned:<name>@<version>``
(pinned); ``rolora.models.embedder_name`` turns either into the canonical ``tuned:<name>@<version>`` that the index
manifest and the embedding cache record, so promoting a new version makes an index built with the old one refused
until ``rolora ingest … --rebuild``. ``manifest.json`` records the domain, the base embedder, the data card, the
training config, metrics, gate results, the stage (``candidate`` -> ``promoted`` -> ``retired``) and the SHA-256 of
every file; ``resolve`` refuses a folder whose files changed since registration, and pickled weights are never
registered (``.bin``/``.pt``/``.pkl``). Writes are atomic (a temp folder renamed into place, manifests replaced with
``os.replace``) under a file lock. Importing this module is light (no torch).

>>> reg = EmbedderRegistry.from_home(Path("~/.cache/rolora"))  # doctest: +SKIP
>>> rec = reg.register(folder, "contracts-retriever", "contracts", "all-minilm-l6-v2", data_card=card)  # doctest: +SKIP
>>> reg.record_gates(rec.ref, {"passed": True, "failed_gates": [], "gates": [...]})  # doctest: +SKIP
>>> reg.promote(rec.ref).ref  # 'tuned:contracts-retriever@1'  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rolora import staged
from rolora.errors import RoloraRuntimeError, UserError
from rolora.fileutil import atomic_write_text
from rolora.staged import Stage, StagedRecord, StageEvent, json_safe, now

__all__ = ["TUNED_PREFIX", "EmbedderRecord", "EmbedderRegistry", "is_tuned", "parse_tuned"]

TUNED_PREFIX = "tuned:"
MANIFEST = "manifest.json"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def is_tuned(spec: str) -> bool:
    """Whether an embedder spec names a registered tuned embedder (``tuned:<name>[@<version>]``)."""
    return spec.startswith(TUNED_PREFIX)


def parse_tuned(spec: str) -> tuple[str, int | None]:
    """``"tuned:x@3"`` (or ``"x@3"``) -> ``("x", 3)``; ``"tuned:x"`` -> ``("x", None)``."""
    ref = spec[len(TUNED_PREFIX) :] if is_tuned(spec) else spec
    name, _, version = ref.partition("@")
    if not _NAME.match(name):
        raise UserError(
            f"tuned embedder name {name!r} is invalid: write tuned:NAME or tuned:NAME@VERSION "
            "(letters, digits, '_' or '-', max 64)"
        )
    if version and not version.isdigit():
        raise UserError(f"tuned embedder version in {spec!r} must be a number, as in tuned:{name}@3")
    return name, int(version) if version else None


class EmbedderRecord(StagedRecord, BaseModel):
    """One registered version: its ``manifest.json`` plus the folder it lives in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    name: str
    version: int = Field(ge=1)
    domain: str
    base_embedder: str
    data_card: dict[str, Any] = Field(default_factory=dict)
    training_config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    gates: dict[str, Any] = Field(default_factory=dict)
    created: str
    stage: Stage = "candidate"
    history: list[StageEvent] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 at registration")
    path: Path = Field(default=Path(), exclude=True)

    @property
    def ref(self) -> str:
        """Canonical ``tuned:name@version`` (what the index manifest records)."""
        return f"{TUNED_PREFIX}{self.name}@{self.version}"


class EmbedderRegistry:
    """Versioned tuned embedders under ``root`` (``<home>/embedders``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    @classmethod
    def from_home(cls, home: Path | str) -> EmbedderRegistry:
        return cls(Path(home).expanduser() / "embedders")

    # -- reading --------------------------------------------------------------------------------------------------
    def versions(self, name: str) -> builtins.list[int]:
        return staged.versions(self.root, name)

    def names(self) -> builtins.list[str]:
        return staged.names(self.root)

    def _load(self, name: str, version: int) -> EmbedderRecord:
        folder = self.root / f"{name}@{version}"
        if not folder.is_dir():
            known = ", ".join(f"{name}@{v}" for v in self.versions(name)) or "none"
            raise UserError(
                f"tuned embedder '{name}@{version}' is not in the registry at {self.root} (versions: {known})"
            )
        manifest = folder / MANIFEST
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            rec = EmbedderRecord.model_validate({**data, "path": folder})
        except FileNotFoundError as e:
            raise RoloraRuntimeError(f"tuned embedder '{name}@{version}': {manifest} is missing; re-register it") from e
        except (ValueError, ValidationError) as e:
            raise RoloraRuntimeError(f"tuned embedder manifest {manifest} is invalid: {e}") from e
        if (rec.name, rec.version) != (name, version):
            raise RoloraRuntimeError(f"tuned embedder manifest {manifest} names {rec.ref}, not {name}@{version}")
        return rec

    def _get(self, ref: str, bare: Literal["promoted", "latest"]) -> EmbedderRecord:
        name, version = parse_tuned(ref)
        if version is not None:
            return self._load(name, version)
        records = [self._load(name, v) for v in self.versions(name)]
        if not records:
            known = ", ".join(self.names()) or "none"
            raise UserError(
                f"tuned embedder '{name}' is not in the registry at {self.root} (known: {known}); "
                f"tune one with `rolora retriever tune --domain D --name {name}` or check the name"
            )
        if bare == "latest":
            return records[-1]
        promoted = [r for r in records if r.stage == "promoted"]
        if not promoted:
            cands = ", ".join(f"{r.name}@{r.version} ({r.stage})" for r in records)
            raise UserError(
                f"tuned embedder '{name}' has no promoted version (registered: {cands}); promote one with "
                f"`rolora retriever promote {name}@N` or pin it as tuned:{name}@N"
            )
        return max(promoted, key=lambda r: (r.promoted_at, r.version))

    def show(self, ref: str) -> EmbedderRecord:
        """The record of ``name@version``, or of the latest promoted version of a bare ``name``."""
        return self._get(ref, "promoted")

    def latest(self, ref: str) -> EmbedderRecord:
        """The record of ``name@version``, or of the highest version of a bare ``name`` whatever its stage."""
        return self._get(ref, "latest")

    def list(self) -> builtins.list[EmbedderRecord]:
        return [self._load(n, v) for n in self.names() for v in self.versions(n)]

    def canonical(self, ref: str) -> str:
        """``tuned:name`` -> ``tuned:name@N`` (its latest promoted version); a pinned ref is checked to exist."""
        return self.show(ref).ref

    def resolve(self, ref: str) -> tuple[str, Path]:
        """(canonical ref, folder) after checking every file's SHA-256 against the one recorded at registration."""
        rec = self.show(ref)
        present = {str(p.relative_to(rec.path)) for p in rec.path.rglob("*") if p.is_file()} - {MANIFEST}
        pickles = sorted(p for p in present if p.endswith(_PICKLES))
        if pickles:
            raise RoloraRuntimeError(f"tuned embedder '{rec.ref}' holds pickled files {pickles}; re-register it")
        from rolora.models import sha256_file

        for rel, digest in rec.files.items():
            path = rec.path / rel
            if not path.is_file():
                raise RoloraRuntimeError(f"tuned embedder '{rec.ref}': {path} is missing; re-register it")
            if sha256_file(path) != digest:
                raise RoloraRuntimeError(
                    f"tuned embedder '{rec.ref}': {path} changed since it was registered (sha256 mismatch); "
                    "re-register it from its run folder"
                )
        return rec.ref, rec.path

    # -- writing --------------------------------------------------------------------------------------------------
    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return staged.registry_lock(self.root)

    def _save(self, rec: EmbedderRecord) -> EmbedderRecord:
        atomic_write_text(rec.path / MANIFEST, json.dumps(rec.model_dump(mode="json"), indent=2) + "\n")
        return rec

    def register(
        self,
        src_folder: Path | str,
        name: str,
        domain: str,
        base_embedder: str,
        data_card: Mapping[str, Any] | None = None,
        training_config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> EmbedderRecord:
        """Copy a sentence-transformers folder (``model.save`` output) in as the next version of ``name``."""
        bare, version = parse_tuned(name)
        if version is not None:
            raise UserError(f"register '{bare}' without a version: the registry picks the next one")
        src = Path(src_folder)
        if not (src / "model.safetensors").is_file():
            raise UserError(
                f"{src} has no model.safetensors; point register at the folder SentenceTransformer.save wrote"
            )
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != MANIFEST)
        pickles = [str(p.relative_to(src)) for p in files if p.name.endswith(_PICKLES)]
        if pickles:
            raise UserError(f"{src} holds pickled files {pickles}; save the model with safetensors only")
        card = json_safe(dict(data_card or {}), "data_card")
        tcfg = json_safe(dict(training_config or {}), "training_config")
        mets = json_safe(dict(metrics or {}), "metrics")
        from rolora.models import sha256_file

        with self._lock():
            number = max(self.versions(bare), default=0) + 1
            final = self.root / f"{bare}@{number}"
            tmp = Path(tempfile.mkdtemp(prefix=f".{bare}@{number}.", suffix=".tmp", dir=self.root))
            try:
                for f in files:
                    dest = tmp / f.relative_to(src)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest)
                rec = EmbedderRecord(
                    name=bare,
                    version=number,
                    domain=domain,
                    base_embedder=base_embedder,
                    data_card=card,
                    training_config=tcfg,
                    metrics=mets,
                    created=now(),
                    history=[StageEvent(stage="candidate", at=now(), note="registered")],
                    files={str(f.relative_to(src)): sha256_file(tmp / f.relative_to(src)) for f in files},
                    path=tmp,
                )
                self._save(rec)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return rec.model_copy(update={"path": final})

    def record_gates(self, ref: str, gates: Mapping[str, Any]) -> EmbedderRecord:
        """Store gate results (``{"passed", "failed_gates", "gates": [...]}``) in the manifest of ``name@version``."""
        data = json_safe(dict(gates), "gate results")
        with self._lock():
            rec = self._get(ref, "latest")
            return self._save(rec.model_copy(update={"gates": data}))

    def _set_stage(self, rec: EmbedderRecord, stage: Stage, note: str) -> EmbedderRecord:
        event = StageEvent(stage=stage, at=now(), note=note)
        return self._save(rec.model_copy(update={"stage": stage, "history": [*rec.history, event]}))

    def promote(self, ref: str, force: bool = False) -> EmbedderRecord:
        """Promote ``name@version`` (a bare name: its highest version) and retire the one promoted before; refused,
        unless ``force``, when its gates failed or none were recorded."""
        with self._lock():
            rec = self._get(ref, "latest")
            if rec.stage == "promoted":
                return rec
            note = ""
            if not rec.gates or rec.failed_gates:
                why = f"failed gate(s) {', '.join(rec.failed_gates)}" if rec.gates else "has no recorded gate results"
                if not force:
                    raise UserError(
                        f"tuned embedder '{rec.ref}' {why}; tune it again or pass --force to promote it anyway"
                    )
                note = f"forced: {why}"
            promoted = self._set_stage(rec, "promoted", note)
            for v in self.versions(rec.name):
                other = self._load(rec.name, v)
                if v != rec.version and other.stage == "promoted":
                    self._set_stage(other, "retired", f"replaced by {rec.ref}")
        return promoted
