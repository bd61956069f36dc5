"""Telemetry configuration and export over real OTLP/HTTP (the graph's own spans are checked in
test_agent_graph.py on a real run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otlp_receiver import otlp_receiver


@pytest.fixture(autouse=True)
def _clean_provider() -> Iterator[None]:
    from rolora import telemetry

    telemetry.reset()
    yield
    telemetry.reset()


def test_otlp_export_carries_nesting_attributes_and_service_name() -> None:
    from rolora import telemetry
    from rolora.config import TelemetryConfig

    with otlp_receiver() as rx:
        cfg = TelemetryConfig(exporter="otlp", endpoint=f"{rx.url}/v1/traces", service_name="rolora-test")
        assert telemetry.configure(cfg) == "otlp"
        with telemetry.span("rolora.ask", {"rolora.thread_id": "t1"}) as outer:
            with telemetry.span("rolora.llm.analyst") as inner:
                telemetry.set_attributes(
                    inner, {"gen_ai.usage.output_tokens": 7, "rolora.adapter": "a@1", "skipped": None, "bad": [{}]}
                )
            parent = telemetry.caller_context()
        with telemetry.span("rolora.retrieve", parent=parent):  # explicit parent, as across the agent's loop thread
            pass
        assert outer.get_span_context().is_valid
        telemetry.flush()
        spans = {s.name: s for s in rx.spans()}
    assert set(spans) == {"rolora.ask", "rolora.llm.analyst", "rolora.retrieve"}
    ask, llm, ret = spans["rolora.ask"], spans["rolora.llm.analyst"], spans["rolora.retrieve"]
    assert ask.parent_span_id == "" and llm.parent_span_id == ask.span_id and ret.parent_span_id == ask.span_id
    assert len({ask.trace_id, llm.trace_id, ret.trace_id}) == 1
    assert llm.attributes == {"gen_ai.usage.output_tokens": 7, "rolora.adapter": "a@1"}
    assert ask.attributes["rolora.thread_id"] == "t1" and ask.service == "rolora-test"


def test_no_exporter_means_no_spans_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from rolora import telemetry
    from rolora.config import TelemetryConfig

    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert telemetry.configure(TelemetryConfig()) is None
    with telemetry.span("rolora.ask") as s:
        assert not s.is_recording()


def test_unknown_exporter_from_the_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rolora import telemetry
    from rolora.config import TelemetryConfig
    from rolora.errors import UserError

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(UserError, match=r"telemetry\.exporter: .zipkin. is not supported; use none, console or otlp"):
        telemetry.configure(TelemetryConfig())
