"""Eval suites: one YAML file naming the datasets, the configurations to compare, the metrics and the gate.

Paths in a suite are relative to the suite file, or to ``data_dir`` for the data it names (``data_dir`` itself is
relative to the suite file and ``data_dir_env`` overrides it). A suite either names a ``config`` (rolora.yaml) or
starts from the usual lookup (``--config``, ``$ROLORA_CONFIG``, ``./rolora.yaml``, built-in defaults); its
``domains`` entries are laid over the config's (corpus, include, exclude …; the config's role bindings stay), and
its ``agent`` entries over ``agent:``. Validation is strict and every error is one line naming the file and key::

    evals/suites/x.yaml: configurations.adapters.retrieval: Input should be 'dense', 'lexical' or 'hybrid' ...

>>> suite = load_suite(Path("evals/suites/contracts.yaml"))  # doctest: +SKIP
>>> config = suite.resolve_config()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from rolora.config import DeclinedAnswer, Quantize
from rolora.errors import ConfigError

from .metrics import GROUPS, Group, metric_catalogue

if TYPE_CHECKING:
    from rolora.config import Config

    from .datasets import EvalQuestion

__all__ = [
    "BootstrapSpec",
    "ConfigurationSpec",
    "DatasetSpec",
    "GateSpec",
    "JudgeSpec",
    "MetricsSpec",
    "Suite",
    "load_suite",
    "parse_tolerance",
]

Role = Literal["query_writer", "analyst", "critic"]
ROLES: tuple[Role, ...] = ("query_writer", "analyst", "critic")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOLERANCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """Questions to ask, in which domain, and which fixed subset of them."""

    name: str = ""
    path: Path  # relative to data_dir when the suite has one, else to the suite file
    domain: str  # the domain the questions are asked in (overrides each row's own domain)
    split: list[Literal["train", "validation", "test"]] | None = None  # None: every contract
    split_seed: int = 0
    split_validation: float = Field(0.1, ge=0, lt=1)
    split_test: float = Field(0.2, ge=0, le=1)
    contracts: int | None = Field(None, ge=1, description="a fixed sample of this many contracts")
    answerable_per_contract: int | None = Field(None, ge=0)
    unanswerable_per_contract: int | None = Field(None, ge=0)
    seed: int = 0


class ConfigurationSpec(_Strict):
    """One configuration of the agent: which adapter each role runs, retrieval mode, backend, critic."""

    description: str = ""
    # "base": every role on the base model; "promoted": each role's adapter (the config's binding, else the
    # latest promoted one registered for the domain, else base); a mapping: only those roles, the rest on base,
    # each value "base" | "promoted" | "name" | "name@N".
    adapters: Literal["base", "promoted"] | dict[Role, str] = "base"
    adapter_domain: str | None = None  # where "promoted" looks (default: the questions' domain)
    retrieval: Literal["dense", "lexical", "hybrid"] | None = None  # None: the config's retrieval.mode
    backend: Literal["inprocess", "vllm"] | None = None  # None: the config's backend.kind
    quantize: Quantize | None = None  # inprocess: backend.quantize; None: the config's
    grammar_drafts: bool | None = None  # inprocess: backend.grammar_drafts; None: the config's
    prompt_lookup: int | None = Field(None, ge=0, le=64)  # inprocess: backend.prompt_lookup; None: the config's
    use_critic: bool | None = None  # None: the config's agent.use_critic
    use_query_writer: bool | None = None  # None: the config's agent.use_query_writer
    max_iterations: int | None = Field(None, ge=1, le=10)  # analyse/critique rounds; None: agent.max_iterations
    # the base model's analyst output format (an adapter keeps its own); None: the config's agent.analyst_format
    analyst_format: Literal["quote", "sentence"] | None = None
    adapter_refusals: bool | None = None  # an analyst adapter may decline with no evidence; None: the config's
    k: int | None = Field(None, ge=1, le=20)  # passages given to the analyst; None: the config's agent.k
    declined_answer: DeclinedAnswer | None = None  # None: the config's agent.declined_answer
    short_answers: bool | None = None  # typed questions answered with the value; None: the config's agent.short_answers
    typed_reader: bool | None = None  # typed questions read without a model call; None: the config's agent.typed_reader
    yes_no: bool | None = None  # verdicts for yes/no questions; None: the config's agent.yes_no
    # refused below it (0: never); None: the config's agent.min_evidence_similarity
    min_evidence_similarity: float | None = Field(None, ge=0, le=1)

    def agent_overrides(self) -> dict[str, Any]:
        """The agent settings this configuration changes (the rest are the config's ``agent:``)."""
        fields = (
            "use_query_writer",
            "max_iterations",
            "analyst_format",
            "adapter_refusals",
            "k",
            "declined_answer",
            "short_answers",
            "typed_reader",
            "yes_no",
            "min_evidence_similarity",
        )
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}

    def role_choices(self) -> dict[Role, str]:
        if isinstance(self.adapters, str):
            return dict.fromkeys(ROLES, self.adapters)
        return {r: self.adapters.get(r, "base") for r in ROLES}


class MetricsSpec(_Strict):
    k: list[int] = Field(default_factory=lambda: [1, 3, 5], min_length=1)  # the agent keeps agent.k passages
    groups: list[Group] = Field(default_factory=lambda: list(GROUPS), min_length=1)
    headline: list[str] = Field(
        default_factory=lambda: [
            "retrieval.span_recall@5",
            "retrieval.ndcg@5",
            "answer.token_f1",
            "answer.rouge_l",
            "answer.refusal_accuracy",
            "grounding.citation_precision",
            "grounding.all_verified",
            "judge.unsupported_rate",
            "cost.latency_s",
        ]
    )
    primary: str = "answer.token_f1"  # the worst questions are the lowest on it


class JudgeSpec(_Strict):
    """The critic as a judge of every configuration's final answers (one fixed judge, so they compare)."""

    enabled: bool = True
    adapter: str = "promoted"  # "base" | "promoted" (the domain's critic) | "name" | "name@N"
    adapter_domain: str | None = None


class GateSpec(_Strict):
    """Regression gate against a baseline report: each listed metric may drop by at most its tolerance.

    A tolerance is absolute (``0.02``) or relative (``"10%"``); for lower-is-better metrics (latency, refusals of
    answerable questions, unsupported rate) it bounds the rise instead.
    """

    metrics: dict[str, float | str] = Field(default_factory=dict)
    configs: list[str] | None = None  # default: every configuration in both reports


class BootstrapSpec(_Strict):
    samples: int = Field(2000, ge=0, le=100000)
    seed: int = 0
    level: float = Field(0.95, gt=0, lt=1)


class Suite(_Strict):
    name: str
    description: str = ""
    config: Path | None = None
    data_dir: Path | None = None
    data_dir_env: str | None = None
    domains: dict[str, dict[str, Any]] = Field(default_factory=dict)
    agent: dict[str, Any] = Field(default_factory=dict)
    datasets: list[DatasetSpec] = Field(min_length=1)
    configurations: dict[str, ConfigurationSpec] = Field(min_length=1)
    default_configs: list[str] | None = None  # run when --configs is not given (default: all)
    reference: str | None = None  # differences are measured against it (default: the first one run)
    metrics: MetricsSpec = Field(default_factory=lambda: MetricsSpec())
    judge: JudgeSpec = Field(default_factory=lambda: JudgeSpec())
    gate: GateSpec = Field(default_factory=lambda: GateSpec())
    bootstrap: BootstrapSpec = Field(default_factory=lambda: BootstrapSpec())
    concurrency: int = Field(2, ge=1, le=64)
    worst: int = Field(5, ge=0, le=100, description="worst questions shown with their traces")

    _path: Path = PrivateAttr(default=Path("suite.yaml"))

    # -- paths --------------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def folder(self) -> Path:
        return self._path.resolve().parent

    def data_root(self) -> Path:
        """``data_dir`` (or ``$data_dir_env``) resolved; the suite folder when the suite names none."""
        env = os.environ.get(self.data_dir_env) if self.data_dir_env else None
        if env:
            root = Path(env).expanduser()
            where = f"${self.data_dir_env}"
        elif self.data_dir is not None:
            root = self.data_dir.expanduser()
            root = root if root.is_absolute() else self.folder / root
            where = "data_dir"
        else:
            return self.folder
        if not root.is_dir():
            hint = f"; set {self.data_dir_env} to the data folder" if self.data_dir_env else ""
            raise ConfigError(f"{self._path}: {where} resolves to {root}, which is not a folder{hint}")
        return root.resolve()

    def _data_path(self, p: Path) -> Path:
        p = p.expanduser()
        return (p if p.is_absolute() else self.data_root() / p).resolve()

    # -- configurations -----------------------------------------------------------------------------------------
    def select_configs(self, names: list[str] | None) -> list[str]:
        """The configurations to run: ``names`` (validated), else ``default_configs``, else all."""
        chosen = names or self.default_configs or list(self.configurations)
        unknown = [n for n in chosen if n not in self.configurations]
        if unknown:
            raise ConfigError(
                f"{self._path}: configuration {', '.join(unknown)} is not in configurations "
                f"(have: {', '.join(self.configurations)}); check --configs"
            )
        return list(dict.fromkeys(chosen))

    def reference_of(self, configs: list[str]) -> str:
        return self.reference if self.reference in configs else configs[0]

    # -- data -----------------------------------------------------------------------------------------------------
    def load_questions(self) -> list[tuple[DatasetSpec, EvalQuestion]]:
        """Every dataset's selected questions, in order, with the dataset each came from (ids must be unique)."""
        from .datasets import load_dataset, select_questions

        out: list[tuple[DatasetSpec, EvalQuestion]] = []
        seen: dict[str, str] = {}
        for i, ds in enumerate(self.datasets):
            path = self._data_path(ds.path)
            qs = select_questions(
                load_dataset(path),
                split=ds.split,
                split_seed=ds.split_seed,
                validation=ds.split_validation,
                test=ds.split_test,
                contracts=ds.contracts,
                answerable_per_contract=ds.answerable_per_contract,
                unanswerable_per_contract=ds.unanswerable_per_contract,
                seed=ds.seed,
            )
            if not qs:
                raise ConfigError(f"{self._path}: datasets.{i} ({path}) selects no questions; widen split or sample")
            for q in qs:
                if q.id in seen:
                    raise ConfigError(f"{self._path}: question id {q.id!r} is in {seen[q.id]} and {path}")
                seen[q.id] = str(path)
                out.append((ds, q))
        return out

    # -- config ---------------------------------------------------------------------------------------------------
    def resolve_config(self, config: Config | Path | str | None = None) -> Config:
        """The rolora config the suite runs with: ``config`` (a Config or a file), else the suite's ``config``,
        else the usual lookup; with the suite's domains and agent settings laid over it."""
        from rolora.config import AgentConfig, Config, DomainConfig, load_config

        if isinstance(config, Config):
            cfg = config.model_copy(deep=True)
        elif config is not None:
            cfg = load_config(config)
        elif self.config is not None:
            cfg = load_config(self.config if self.config.is_absolute() else self.folder / self.config)
        else:
            cfg = load_config(None)
        domains = dict(cfg.domains)
        for name, raw in self.domains.items():
            try:
                spec = DomainConfig.model_validate(raw)
            except ValidationError as e:
                raise ConfigError(_format(e, self._path, f"domains.{name}.")) from None
            base = domains.get(name)
            merged = base.model_dump() if base is not None else {}
            merged.update({k: getattr(spec, k) for k in spec.model_fields_set})
            dom = DomainConfig.model_validate(merged)
            if "corpus" in spec.model_fields_set:
                dom.corpus = [self._data_path(p) for p in spec.corpus]
            if "qa" in spec.model_fields_set and spec.qa is not None:
                dom.qa = self._data_path(spec.qa)
            domains[name] = dom
        cfg.domains = domains
        if self.agent:
            try:
                cfg.agent = AgentConfig.model_validate({**cfg.agent.model_dump(), **self.agent})
            except ValidationError as e:
                raise ConfigError(_format(e, self._path, "agent.")) from None
        for i, ds in enumerate(self.datasets):
            if ds.domain not in cfg.domains:
                raise ConfigError(
                    f"{self._path}: datasets.{i}.domain '{ds.domain}' is neither in the suite's domains nor in the "
                    f"config (configured: {', '.join(sorted(cfg.domains)) or 'none'}); add it under domains:"
                )
        return cfg

    def metric_names(self) -> list[str]:
        """The catalogue's metrics of the suite's groups, in report order."""
        return [m for m, info in metric_catalogue(self.metrics.k).items() if info.group in self.metrics.groups]


def parse_tolerance(value: float | str) -> tuple[float, bool]:
    """``0.02`` -> (0.02, absolute); ``"10%"`` -> (0.10, relative)."""
    if isinstance(value, int | float):
        return float(value), False
    m = _TOLERANCE.match(value)
    if not m:
        raise ValueError(f"tolerance {value!r} must be a number or a percentage like '10%'")
    return float(m.group(1)) / 100.0, True


def _format(err: ValidationError, source: Path, under: str = "") -> str:
    """``file: key.path: problem; key.path: problem`` (``under`` prefixes every key path)."""
    parts = []
    for e in err.errors():
        loc = under + ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key; remove it or check the spelling")
        elif e["type"] == "missing":
            parts.append(f"{loc}: required; add it")
        else:
            parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def _check(suite: Suite) -> list[str]:
    """Cross-field checks, every problem at once."""
    problems: list[str] = []
    known = metric_catalogue(suite.metrics.k)
    for name in suite.configurations:
        if not _NAME.match(name):
            problems.append(f"configurations.{name}: a name is letters, digits, '-', '_' or '.' (max 64)")
    for field, names in (("default_configs", suite.default_configs or []), ("gate.configs", suite.gate.configs or [])):
        for n in names:
            if n not in suite.configurations:
                problems.append(f"{field}: '{n}' is not in configurations ({', '.join(suite.configurations)})")
    if suite.reference is not None and suite.reference not in suite.configurations:
        problems.append(f"reference: '{suite.reference}' is not in configurations")
    if any(k < 1 for k in suite.metrics.k):
        problems.append(f"metrics.k: cut-offs must be >= 1 (got {suite.metrics.k})")
    wanted = [("metrics.primary", suite.metrics.primary)]
    wanted += [("metrics.headline", m) for m in suite.metrics.headline]
    wanted += [("gate.metrics", m) for m in suite.gate.metrics]
    for field, m in wanted:
        if m not in known:
            problems.append(f"{field}: unknown metric '{m}' (e.g. {', '.join(list(known)[:3])}, answer.token_f1)")
        elif known[m].group not in suite.metrics.groups:
            problems.append(f"{field}: '{m}' is in group {known[m].group}, which metrics.groups leaves out")
    for m, tol in suite.gate.metrics.items():
        try:
            parse_tolerance(tol)
        except ValueError as e:
            problems.append(f"gate.metrics.{m}: {e}")
    for name, spec in suite.configurations.items():
        for role, choice in spec.role_choices().items():
            if not choice.strip():
                problems.append(f"configurations.{name}.adapters.{role}: empty; use base, promoted or name[@N]")
    return problems


def load_suite(path: Path | str) -> Suite:
    """Read and validate a suite file; any problem is one ``ConfigError`` line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found; see evals/suites/ for examples")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML; fix the syntax") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (name, datasets, configurations, ...)")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, path)) from None
    suite._path = path
    problems = _check(suite)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return suite
