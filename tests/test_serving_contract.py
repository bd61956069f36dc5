"""One contract suite that every serving backend passes (in-process PEFT, real vLLM server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from rolora.adapters.serving import Backend, GenerationRequest
from rolora.errors import RoloraError

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about contracts.",
    "What is 2 plus 2?",
]


def _req(content: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": content}], **kw)


@pytest.fixture(params=["inprocess", pytest.param("vllm", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> Backend:
    name = "inprocess_backend" if request.param == "inprocess" else "vllm_backend"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_result_fields_and_adapter_served(backend: Backend) -> None:
    base, alpha = backend.generate([_req(PROMPTS[0], max_tokens=8), _req(PROMPTS[0], adapter="alpha", max_tokens=8)])
    assert base.adapter is None and alpha.adapter == "alpha@1"
    for r in (base, alpha):
        assert r.backend == backend.name and r.prompt_tokens > 5 and 0 < r.completion_tokens <= 8
        assert r.finish_reason in ("stop", "length") and r.latency_s > 0 and r.text


def test_adapters_change_outputs(backend: Backend) -> None:
    reqs = [_req(p, adapter=a, max_tokens=24) for p in PROMPTS for a in (None, "alpha@1", "beta@1")]
    out = backend.generate(reqs)
    texts = {(r.adapter, i // 3): r.text for i, r in enumerate(out)}
    for adapter in ("alpha@1", "beta@1"):
        differs = [texts[(adapter, i)] != texts[(None, i)] for i in range(len(PROMPTS))]
        assert any(differs), f"{adapter} never changed the base model's output"


def test_max_tokens_and_stop_strings(backend: Backend) -> None:
    short, stopped = backend.generate(
        [
            _req("Count from 1 to 30, one number per line.", max_tokens=5),
            _req("Count from 1 to 30 separated by commas.", max_tokens=80, stop=("7",)),
        ]
    )
    assert short.finish_reason == "length" and short.completion_tokens == 5
    assert stopped.finish_reason == "stop" and "7" not in stopped.text and "6" in stopped.text


def test_json_schema_output_parses(backend: Backend) -> None:
    """Every backend writes structured output the way the role adapters were trained: json.dumps' separators, no
    other whitespace, properties in the schema's order (not sorted: "capital" comes before "answered")."""
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 30}, "answered": {"type": "boolean"}},
        "required": ["capital", "answered"],
        "additionalProperties": False,
    }
    (r,) = backend.generate([_req("What is the capital of France? Answer in JSON.", max_tokens=60, json_schema=schema)])
    assert isinstance(r.json, dict) and list(r.json) == ["capital", "answered"], r.text
    assert isinstance(r.json["capital"], str) and isinstance(r.json["answered"], bool)
    assert r.text == json.dumps(r.json, ensure_ascii=False)


def test_unknown_adapter_is_a_clear_error(backend: Backend) -> None:
    with pytest.raises(RoloraError, match="no-such-adapter"):
        backend.generate([_req(PROMPTS[0], adapter="no-such-adapter", max_tokens=4)])


def test_stream_matches_generate(backend: Backend) -> None:
    req = _req(PROMPTS[2], adapter="beta", max_tokens=20)

    async def collect() -> list[str]:
        return [d async for d in backend.stream(req)]

    deltas = asyncio.run(collect())
    (full,) = backend.generate([_req(PROMPTS[2], adapter="beta", max_tokens=20)])
    assert len(deltas) > 1 and "".join(deltas) == full.text
