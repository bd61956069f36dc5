"""OpenTelemetry spans for agent runs.

One ``rolora.ask`` span per run, a child span per graph node (``rolora.route``, ``rolora.retrieve``, ...), and below
those one span per model call (``rolora.llm.<role>``, with the GenAI semantic-convention attributes
``gen_ai.usage.input_tokens``/``output_tokens`` and the adapter that served) and per retrieval (``rolora.search``).

Where spans go:
- an app that installed its own SDK ``TracerProvider`` gets them there (the OpenTelemetry API's global provider);
- ``telemetry.exporter`` in ``rolora.yaml`` (or ``OTEL_TRACES_EXPORTER``) = ``console`` | ``otlp`` installs a provider
  for rolora's spans only; ``otlp`` posts OTLP/HTTP protobuf to ``telemetry.endpoint`` (default: the SDK's, i.e.
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``http://localhost:4318/v1/traces``) and needs ``rolora[otel]``;
- otherwise spans are no-ops (the API's default), costing next to nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from rolora.errors import UserError

if TYPE_CHECKING:
    from rolora.config import TelemetryConfig

__all__ = ["caller_context", "configure", "flush", "reset", "set_attributes", "span", "tracer"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_provider: Any = None  # the SDK TracerProvider that configure() installed, if any
_installed: tuple[str, str | None] | None = None  # (exporter, endpoint) it was installed for


def configure(cfg: TelemetryConfig) -> str | None:
    """Install the exporter ``cfg`` names (once per process); returns the exporter in use, or None."""
    global _provider, _installed
    exporter = cfg.exporter if cfg.exporter != "none" else os.environ.get("OTEL_TRACES_EXPORTER", "none").strip()
    if exporter in ("", "none"):
        return None
    if exporter not in ("console", "otlp"):
        raise UserError(f"telemetry.exporter: {exporter!r} is not supported; use none, console or otlp")
    with _lock:
        if _installed is not None:
            if _installed != (exporter, cfg.endpoint):
                log.warning("telemetry: keeping the %s exporter installed first (not %s)", _installed[0], exporter)
            return _installed[0]
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        span_exporter: SpanExporter
        if exporter == "console":
            span_exporter = ConsoleSpanExporter()
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as e:
                raise UserError(
                    "telemetry.exporter: otlp needs the OTLP exporter; run `pip install 'rolora[otel]'` "
                    "(opentelemetry-exporter-otlp-proto-http)"
                ) from e
            span_exporter = OTLPSpanExporter(endpoint=cfg.endpoint) if cfg.endpoint else OTLPSpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
        _provider, _installed = provider, (exporter, cfg.endpoint)
        log.info("telemetry: exporting spans with %s%s", exporter, f" to {cfg.endpoint}" if cfg.endpoint else "")
        return exporter


def tracer() -> trace.Tracer:
    """rolora's tracer: on the provider ``configure`` installed, else on the process's global provider."""
    provider = _provider
    if provider is not None:
        return provider.get_tracer("rolora")
    return trace.get_tracer("rolora")


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, parent: Any = None) -> Iterator[trace.Span]:
    """A span, child of the current one (or of the OpenTelemetry context ``parent``, e.g. captured on the caller's
    thread); exceptions are recorded on it and re-raised."""
    with tracer().start_as_current_span(name, context=parent) as s:
        if attributes:
            set_attributes(s, attributes)
        yield s


def set_attributes(s: trace.Span, attributes: Mapping[str, Any]) -> None:
    """Set the attributes OpenTelemetry can carry (scalars and lists of scalars); None values are skipped."""
    if not s.is_recording():
        return
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            s.set_attribute(key, value)
        elif isinstance(value, list | tuple) and all(isinstance(v, str | bool | int | float) for v in value):
            s.set_attribute(key, list(value))


def caller_context() -> Any:
    """The caller's OpenTelemetry context, to parent a run that executes on another thread's event loop."""
    from opentelemetry import context

    return context.get_current()


def flush(timeout_ms: int = 10_000) -> None:
    """Send the spans still buffered (a CLI calls this before it exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def reset() -> None:
    """Flush and uninstall the provider ``configure`` installed (tests, or an app reconfiguring)."""
    global _provider, _installed
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _provider, _installed = None, None
