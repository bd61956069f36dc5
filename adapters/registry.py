"""The versioned adapter registry: ``name@version`` folders with a manifest each, stages, gates and exports.

Layout under the root (default ``<home>/adapters``)::

    contracts-analyst@1/   adapter_config.json  adapter_model.safetensors  manifest.json  (kind "lora")
    contracts-analyst@2/   ...
    contracts-full@1/      config.json  model.safetensors  tokenizer files  manifest.json  (kind "full")

The LoRA folders are in the PEFT layout that vLLM's ``--lora-modules`` loads as is. ``manifest.json`` records the
name, version, kind, role, domain, the base model id and the SHA-256 of its weights, the data card hash, the training
config, metrics, gate results, the created time and the stage, which moves ``candidate`` -> ``promoted`` ->
``retired``. A bare ``name`` resolves to its latest *promoted* version; ``name@3`` pins a version.

Guarantees: names are validated (no separators, no ``..``, at most 64 characters); only safetensors are ever
loaded (``.bin``/``.pt`` weights are refused: pickles run code when loaded); an adapter is refused on a base model
other than the one it was trained on; every write is atomic (a new version is built in a temp folder and renamed
into place, a manifest is written to a temp file and ``os.replace``-d), and writers take a file lock, so a crash
leaves the last good state and two processes never get the same version.

>>> reg = Registry.from_config(load_config())  # doctest: +SKIP
>>> rec = reg.register(out, "contracts-analyst", "analyst", "contracts", base_dir, data_card_hash=h)  # doctest: +SKIP
>>> reg.record_gates(rec.ref, run_gates(base_dir, rec.path, val, None, None))  # doctest: +SKIP
>>> reg.promote(rec.ref)  # doctest: +SKIP
>>> reg("contracts-analyst")  # ('contracts-analyst@1', PosixPath('.../contracts-analyst@1')) # doctest: +SKIP

Importing this module is light: it loads no torch, transformers or PEFT (merging an adapter into a full model is
``rolora.adapters.export``).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rolora import staged
from rolora.errors import RoloraRuntimeError, UserError
from rolora.fileutil import atomic_write_text, is_disk_full
from rolora.staged import Stage, StagedRecord, StageEvent, json_safe, now

from .base_models import (
    BaseModelInfo,
    Kind,
    _arch_mismatch,
    _base_mismatch,
    _check_weights,
    _read_json,
    _recorded_base_name,
    base_model_info,
    check_base_compatible,
    check_model_folder,
    detect_kind,
)
from .serving.base import MANIFEST, parse_adapter_ref, verify_adapter_files

if TYPE_CHECKING:
    from rolora.config import Config

__all__ = [
    "MANIFEST",
    "ROLES",
    "AdapterRecord",
    "BaseModelInfo",
    "Kind",
    "Registry",
    "Stage",
    "StageEvent",
    "base_model_info",
    "check_base_compatible",
    "check_model_folder",
    "detect_kind",
]

log = logging.getLogger("rolora.adapters")

ROLES = ("query_writer", "analyst", "critic", "domain")

_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, fsync, ``os.replace``)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _no_space(path: Path, doing: str) -> UserError:
    return UserError(
        f"{path}: no space left on device while {doing}; free space on that disk and try again "
        "(the registry is left as it was)"
    )


# -- records ------------------------------------------------------------------------------------------------------


class AdapterRecord(StagedRecord, BaseModel):
    """One registered version: the content of its ``manifest.json`` plus the folder it lives in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    name: str
    version: int = Field(ge=1)
    kind: Kind = "lora"
    role: str
    domain: str
    base_model: str
    base_weights_sha256: str | None = None
    data_card_hash: str | None = None
    training_config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    gates: dict[str, Any] = Field(default_factory=dict)
    created: str
    stage: Stage = "candidate"
    history: list[StageEvent] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256 at registration")
    path: Path = Field(default=Path(), exclude=True)

    @property
    def ref(self) -> str:
        """Canonical ``name@version``."""
        return f"{self.name}@{self.version}"

    def manifest(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _gate_summary(gates: Mapping[str, Any], failed: Sequence[str]) -> str:
    """'forgetting (rise 7.20% > 5.00%)' for each failed gate whose summary is recorded."""
    by_name: dict[str, str] = {}
    for g in gates.get("gates", []) or []:
        if isinstance(g, Mapping) and "name" in g:
            by_name[str(g["name"])] = str(g.get("summary", ""))
    return ", ".join(f"{n} ({by_name[n]})" if by_name.get(n) else n for n in failed)


# -- registry -----------------------------------------------------------------------------------------------------


class Registry:
    """Versioned adapters under ``root``; also an ``AdapterResolver`` (``registry("name") -> (ref, folder)``).

    ``base_dir``: when given (or, for ``from_config``, the configured generator), every ``resolve`` refuses an
    adapter trained on another base.
    """

    def __init__(self, root: Path | str, base_dir: Path | str | None = None) -> None:
        self.root = Path(root).expanduser()
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._base_spec: tuple[str, Path] | None = None

    @classmethod
    def from_config(cls, config: Config, base_dir: Path | str | None = None) -> Registry:
        """The registry at ``<home>/adapters``, checking adapters against the configured generator."""
        reg = cls(config.home_dir / "adapters", base_dir)
        if base_dir is None:
            reg._base_spec = (config.models.generator, config.home_dir)
        return reg

    @property
    def base_dir(self) -> Path | None:
        """The base model every resolved adapter must match (resolved from the config on first use)."""
        if self._base_dir is None and self._base_spec is not None:
            from rolora.models import resolve_generator

            spec, home = self._base_spec
            self._base_dir = resolve_generator(spec, home, prepare=False)
        return self._base_dir

    # -- reading --------------------------------------------------------------------------------------------------
    def versions(self, name: str) -> builtins.list[int]:
        """Registered versions of ``name``, ascending."""
        name, _ = parse_adapter_ref(name)
        return staged.versions(self.root, name)

    def names(self) -> builtins.list[str]:
        return staged.names(self.root)

    def _load(self, name: str, version: int) -> AdapterRecord:
        folder = self.root / f"{name}@{version}"
        if not folder.is_dir():
            known = ", ".join(f"{name}@{v}" for v in self.versions(name)) or "none"
            raise UserError(f"adapter '{name}@{version}' is not in the registry at {self.root} (versions: {known})")
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise RoloraRuntimeError(f"adapter '{name}@{version}': {manifest} is missing; re-register the adapter")
        data = _read_json(manifest, "adapter manifest")
        try:
            rec = AdapterRecord.model_validate({**data, "path": folder})
        except ValidationError as e:
            raise RoloraRuntimeError(f"adapter manifest {manifest} is invalid ({e.error_count()} errors): {e}") from e
        if (rec.name, rec.version) != (name, version):
            raise RoloraRuntimeError(f"adapter manifest {manifest} names {rec.ref}, not {name}@{version}")
        return rec

    def _all(self, name: str) -> builtins.list[AdapterRecord]:
        return [self._load(name, v) for v in self.versions(name)]

    def _latest_promoted(self, name: str) -> AdapterRecord:
        records = self._all(name)
        if not records:
            known = ", ".join(self.names()) or "none"
            raise UserError(
                f"adapter '{name}' is not in the registry at {self.root} (known: {known}); "
                "train and register it, or check the name"
            )
        promoted = [r for r in records if r.stage == "promoted"]
        if not promoted:
            cands = ", ".join(f"{r.ref} ({r.stage})" for r in records)
            raise UserError(
                f"adapter '{name}' has no promoted version (registered: {cands}); "
                f"promote one with `rolora adapters promote {name}@N` or pin a version as {name}@N"
            )
        return max(promoted, key=lambda r: (r.promoted_at, r.version))

    def _get(self, ref: str, bare: Literal["promoted", "latest"]) -> AdapterRecord:
        name, version = parse_adapter_ref(ref)
        if version is not None:
            return self._load(name, version)
        if bare == "promoted":
            return self._latest_promoted(name)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise UserError(f"adapter '{name}' is not in the registry at {self.root} (known: {known})")
        return self._load(name, versions[-1])

    def show(self, ref: str) -> AdapterRecord:
        """The record of ``name@version``, or of the latest promoted version for a bare ``name``."""
        return self._get(ref, "promoted")

    def latest(self, ref: str) -> AdapterRecord:
        """The record of ``name@version``, or of the highest version of a bare ``name`` whatever its stage."""
        return self._get(ref, "latest")

    def list(
        self, domain: str | None = None, role: str | None = None, stage: Stage | None = None
    ) -> builtins.list[AdapterRecord]:
        """Every registered version, by name then version, optionally filtered. Unreadable manifests are skipped
        with a warning."""
        out: builtins.list[AdapterRecord] = []
        for name in self.names():
            for v in self.versions(name):
                try:
                    rec = self._load(name, v)
                except RoloraRuntimeError as e:
                    log.warning("skipping %s@%s: %s", name, v, e)
                    continue
                if domain in (None, rec.domain) and role in (None, rec.role) and stage in (None, rec.stage):
                    out.append(rec)
        return out

    # -- resolving ------------------------------------------------------------------------------------------------
    def check_base(self, ref: str, base_dir: Path | str) -> AdapterRecord:
        """Raise ``UserError`` unless ``ref`` was trained on ``base_dir``; returns its record."""
        rec = self._get(ref, "promoted")
        base = base_model_info(base_dir)
        reason = _base_mismatch(rec.ref, rec.base_weights_sha256, rec.base_model, base)
        by_sha = bool(rec.base_weights_sha256 and base.weights_sha256)  # equal weights beat any recorded path
        if reason is None and rec.kind == "lora" and not by_sha:
            reason = _base_mismatch(rec.ref, None, _recorded_base_name(rec.path), base)
        if reason is None and rec.kind == "full":
            reason = _arch_mismatch(rec.ref, _read_json(rec.path / "config.json", "model config"), base)
        if reason:
            raise UserError(reason)
        return rec

    def resolve(self, ref: str) -> tuple[str, Path]:
        """``"name@3"`` -> that version; ``"name"`` -> the latest promoted one. Returns (canonical ref, folder).

        Refuses pickled weights, files whose sha256 is not the one recorded at registration, and, when the
        registry has a base model, adapters trained on another base.
        """
        rec = self._get(ref, "promoted")
        _check_weights(rec.ref, rec.path, rec.kind)
        verify_adapter_files(rec.ref, rec.path)
        base_dir = self.base_dir
        if base_dir is not None:
            self.check_base(rec.ref, base_dir)
        return rec.ref, rec.path

    def __call__(self, ref: str) -> tuple[str, Path]:
        """``AdapterResolver``: like ``resolve`` but only LoRA adapters (a full model is served as the base)."""
        canonical, folder = self.resolve(ref)
        if detect_kind(folder) != "lora":
            raise UserError(
                f"'{canonical}' is a full fine-tuned model, not a LoRA adapter; serve it as the base model "
                f"(models.generator: {folder})"
            )
        return canonical, folder

    def role_adapter(self, config: Config, domain: str, role: str) -> str | None:
        """The canonical ``name@version`` bound to ``role`` in ``domains.<domain>.roles`` (None when unbound).

        A bare name in the config means its latest promoted version. An adapter registered for another role is
        refused (an adapter trained on another domain is allowed: e.g. a CUAD analyst for your contracts).
        """
        binding = next((b for r, b in config.domain(domain).roles.items() if r == role), None)
        if binding is None or binding.adapter is None:
            return None
        key = f"domains.{domain}.roles.{role}.adapter"
        try:
            canonical, _ = self.resolve(binding.adapter)
        except UserError as e:
            raise UserError(f"{key}: {e}") from e
        rec = self._get(canonical, "promoted")
        if rec.role != role:
            raise UserError(
                f"{key}: '{canonical}' was trained for the {rec.role} role, not {role}; bind a {role} adapter"
            )
        if rec.domain != domain:
            log.info("%s: '%s' was trained on domain %s", key, canonical, rec.domain)
        return canonical

    def role_adapters(self, config: Config, domain: str) -> dict[str, str]:
        """``{role: name@version}`` for every role bound in ``domains.<domain>.roles``."""
        out: dict[str, str] = {}
        for role in config.domain(domain).roles:
            ref = self.role_adapter(config, domain, role)
            if ref is not None:
                out[role] = ref
        return out

    def vllm_lora_modules(self, refs: Sequence[str]) -> builtins.list[str]:
        """``vllm serve --lora-modules`` arguments: ``["name@version=/abs/folder", ...]``."""
        return [f"{m['name']}={m['path']}" for m in self.vllm_lora_modules_json(refs)]

    def vllm_lora_modules_json(
        self, refs: Sequence[str], base_model_name: str | None = None
    ) -> builtins.list[dict[str, str]]:
        """The JSON form of ``--lora-modules``: ``{"name", "path"[, "base_model_name"]}`` per adapter.

        ``base_model_name``: the name the vLLM server serves its base model under, when it is not the default.
        """
        out: builtins.list[dict[str, str]] = []
        for ref in refs:
            canonical, folder = self(ref)
            item = {"name": canonical, "path": str(folder.resolve())}
            if base_model_name:
                item["base_model_name"] = base_model_name
            out.append(item)
        return out

    # -- writing --------------------------------------------------------------------------------------------------
    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return staged.registry_lock(self.root)

    def _save(self, rec: AdapterRecord) -> AdapterRecord:
        try:
            _write_json_atomic(rec.path / MANIFEST, rec.manifest())
        except OSError as e:
            if is_disk_full(e):
                raise _no_space(rec.path, f"writing the manifest of {rec.ref}") from e
            raise
        return rec

    def register(
        self,
        src_folder: Path | str,
        name: str,
        role: str,
        domain: str,
        base_dir: Path | str,
        data_card_hash: str | None = None,
        training_config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        kind: Kind | None = None,
        move: bool = False,
    ) -> AdapterRecord:
        """Copy (or ``move``) ``src_folder`` into the registry as the next version of ``name``, stage candidate.

        ``kind`` is detected (``adapter_config.json`` -> "lora", ``config.json`` -> "full") unless given. The
        folder is refused when its weights are pickles or when it was trained on another base than ``base_dir``.
        Trainer state pickles (``training_args.bin``, ``optimizer.pt``…) are left behind.
        """
        bare, version = parse_adapter_ref(name)
        if version is not None:
            raise UserError(f"register '{bare}' without a version: the registry picks the next one")
        if role not in ROLES:
            raise UserError(f"role {role!r} is unknown; use one of {', '.join(ROLES)}")
        if not _DOMAIN.match(domain):
            raise UserError(f"domain {domain!r} must be lowercase letters, digits, '-' or '_' (max 63)")
        src = Path(src_folder)
        if not src.is_dir():
            raise UserError(f"{src} is not a folder; point register at the folder save_pretrained wrote")
        kind = kind or detect_kind(src)
        files = _check_weights(bare, src, kind)
        subdirs = sorted(p.name for p in src.iterdir() if p.is_dir())
        if subdirs:
            log.info("'%s': sub-folders %s are not copied into the registry", bare, ", ".join(subdirs))
        base = base_model_info(base_dir)
        if kind == "lora":
            reason = _base_mismatch(bare, None, _recorded_base_name(src), base)
        else:
            reason = _arch_mismatch(bare, _read_json(src / "config.json", "model config"), base)
        if reason:
            raise UserError(reason)
        tcfg = json_safe(dict(training_config or {}), "training_config")
        mets = json_safe(dict(metrics or {}), "metrics")

        from rolora.models import sha256_file

        with self._lock():
            number = max(self.versions(bare), default=0) + 1
            final = self.root / f"{bare}@{number}"
            moved: builtins.list[Path] = []
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".{bare}@{number}.", suffix=".tmp", dir=self.root))
            except OSError as e:
                if is_disk_full(e):
                    raise _no_space(self.root, f"registering {bare}@{number}") from e
                raise
            try:
                for f in files:
                    if move:
                        shutil.move(str(f), tmp / f.name)
                        moved.append(f)
                    else:
                        shutil.copy2(f, tmp / f.name)
                rec = AdapterRecord(
                    name=bare,
                    version=number,
                    kind=kind,
                    role=role,
                    domain=domain,
                    base_model=base.model_id,
                    base_weights_sha256=base.weights_sha256,
                    data_card_hash=data_card_hash,
                    training_config=tcfg,
                    metrics=mets,
                    created=now(),
                    stage="candidate",
                    history=[StageEvent(stage="candidate", at=now(), note="registered")],
                    files={f.name: sha256_file(tmp / f.name) for f in files},
                    path=tmp,
                )
                self._save(rec)
                os.rename(tmp, final)
            except BaseException as e:
                for f in moved:  # a failed move-register gives the source folder its files back
                    shutil.move(str(tmp / f.name), f)
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(e, Exception) and is_disk_full(e):
                    raise _no_space(self.root, f"registering {bare}@{number}") from e
                raise
        log.info("registered %s (%s, %s/%s)", rec.ref, kind, domain, role)
        return rec.model_copy(update={"path": final})

    def _set_stage(self, rec: AdapterRecord, stage: Stage, note: str = "") -> AdapterRecord:
        event = StageEvent(stage=stage, at=now(), note=note)
        return self._save(rec.model_copy(update={"stage": stage, "history": [*rec.history, event]}))

    def record_gates(self, ref: str, results: Any) -> AdapterRecord:
        """Store gate results (a ``GateReport`` or its ``to_dict()``) in the manifest of ``name@version``."""
        data = results.to_dict() if hasattr(results, "to_dict") else results
        if not isinstance(data, Mapping):
            raise UserError("gate results must be a GateReport or a mapping (GateReport.to_dict())")
        gates = json_safe(dict(data), "gate results")
        parse_adapter_ref(ref)
        with self._lock():
            rec = self._get(ref, "latest")
            return self._save(rec.model_copy(update={"gates": gates}))

    def record_metrics(self, ref: str, metrics: Mapping[str, Any]) -> AdapterRecord:
        """Merge ``metrics`` into the manifest's metrics of ``name@version``."""
        mets = json_safe(dict(metrics), "metrics")
        parse_adapter_ref(ref)
        with self._lock():
            rec = self._get(ref, "latest")
            return self._save(rec.model_copy(update={"metrics": {**rec.metrics, **mets}}))

    def promote(self, ref: str, force: bool = False) -> AdapterRecord:
        """Promote ``name@version`` (a bare name: its highest version) and retire the one promoted before.

        Refused, unless ``force``, when the recorded gates failed (the error names them) or none were recorded.
        """
        parse_adapter_ref(ref)  # before the lock creates the root
        with self._lock():
            rec = self._get(ref, "latest")
            if rec.stage == "promoted":
                return rec
            failed = rec.failed_gates
            note = ""
            if not rec.gates:
                if not force:
                    raise UserError(
                        f"adapter '{rec.ref}' has no recorded gate results; run its quality gates first "
                        "or pass --force to promote it anyway"
                    )
                note = "forced: no gate results"
            elif failed:
                if not force:
                    raise UserError(
                        f"adapter '{rec.ref}' failed gate(s) {_gate_summary(rec.gates, failed)}; "
                        "retrain it or pass --force to promote it anyway"
                    )
                note = f"forced: failed {', '.join(failed)}"
            promoted = self._set_stage(rec, "promoted", note)
            for other in self._all(rec.name):
                if other.version != rec.version and other.stage == "promoted":
                    self._set_stage(other, "retired", f"replaced by {rec.ref}")
        log.info("promoted %s%s", rec.ref, f" ({note})" if note else "")
        return promoted

    def retire(self, ref: str) -> AdapterRecord:
        """Retire ``name@version`` (a bare name: the latest promoted one); it stays pinnable as ``name@version``."""
        parse_adapter_ref(ref)
        with self._lock():
            rec = self._get(ref, "promoted")
            if rec.stage == "retired":
                return rec
            return self._set_stage(rec, "retired", "retired")

    def rollback(self, name: str) -> AdapterRecord:
        """Re-promote the highest earlier version of ``name`` that was promoted before and retire the current one.

        Returns the record now promoted.
        """
        bare, version = parse_adapter_ref(name)
        if version is not None:
            raise UserError(f"rollback takes a bare name ('{bare}'); to pick a version use promote {bare}@N")
        with self._lock():
            current = self._latest_promoted(bare)
            earlier = [
                r for r in self._all(bare) if r.version < current.version and r.stage != "promoted" and r.promoted_at
            ]
            if not earlier:
                raise UserError(
                    f"adapter '{bare}' has no earlier version that was promoted before {current.ref}; "
                    f"promote a version with `rolora adapters promote {bare}@N` instead"
                )
            previous = earlier[-1]
            restored = self._set_stage(previous, "promoted", f"rollback from {current.ref}")
            for other in self._all(bare):
                if other.version != previous.version and other.stage == "promoted":
                    self._set_stage(other, "retired", f"rolled back to {previous.ref}")
        log.info("rolled %s back to %s", current.ref, previous.ref)
        return restored
