"""The vLLM backend and launcher against a REAL vLLM server (CPU build here), started once per session.

Where a failure mode cannot be produced by a healthy server (503s, a server without runtime LoRA loading, a
server that lacks an adapter), a small pass-through proxy on 127.0.0.1 sits in front of the real server and
injects it; every such test has a real-server test of the same path beside it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from rolora.adapters.serving import DirectoryAdapters, GenerationRequest
from rolora.adapters.serving.vllm_backend import VLLMBackend
from rolora.adapters.serving.vllm_launcher import VLLMServer, lora_modules_from_dir
from rolora.errors import BackendUnavailableError, RoloraRuntimeError, UserError

import conftest
from vllm_fixture import free_port

if not hasattr(conftest, "vllm_backend"):  # until conftest.py imports them itself
    from vllm_fixture import vllm_backend, vllm_server  # noqa: F401

BASE = "smollm2-135m-instruct"
MSG = [{"role": "user", "content": "Name three colours."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["colour", "count"],
    "additionalProperties": False,
}


def ask(adapter: str | None = None, max_tokens: int = 24, **kw: Any) -> GenerationRequest:
    return GenerationRequest(MSG, adapter=adapter, max_tokens=max_tokens, **kw)


def served(url: str, api_key: str | None) -> dict[str, str | None]:
    """What the server's /v1/models lists: id -> parent."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = httpx.get(url + "/v1/models", timeout=10, headers=headers).json()["data"]
    return {m["id"]: m["parent"] for m in data}


# -- a pass-through proxy that injects failures the real server does not make ------------------------------
class Proxy:
    """Forwards to ``upstream``; can answer 503 to the first ``fail_chat`` chat completions, list only the base
    model (``hide_adapters``) and refuse runtime loading as a server without VLLM_ALLOW_RUNTIME_LORA_UPDATING does
    (``block_load``: FastAPI's 404 for an unregistered route). Counts requests by ``"METHOD /path"``."""

    def __init__(self, upstream: str, fail_chat: int = 0, hide_adapters: bool = False, block_load: bool = False):
        self.upstream, self.fail_chat, self.hide_adapters, self.block_load = (
            upstream,
            fail_chat,
            hide_adapters,
            block_load,
        )
        self.counts: Counter[str] = Counter()
        self.api_key: str | None = None  # the key of the server behind it, for the backends the tests make
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                key = f"{method} {self.path}"
                proxy.counts[key] += 1
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                if key == "POST /v1/chat/completions" and proxy.counts[key] <= proxy.fail_chat:
                    err = {"error": {"message": "overloaded, try again", "type": "ServiceUnavailable", "code": 503}}
                    return self._reply(503, json.dumps(err).encode())
                if key == "POST /v1/load_lora_adapter" and proxy.block_load:
                    return self._reply(404, b'{"detail":"Not Found"}')
                headers = {"Content-Type": "application/json"}
                if self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                resp = httpx.request(method, proxy.upstream + self.path, content=raw, headers=headers, timeout=120)
                body = resp.content
                if key == "GET /v1/models" and proxy.hide_adapters:
                    data = resp.json()
                    data["data"] = [m for m in data["data"] if m.get("parent") is None]
                    body = json.dumps(data).encode()
                self._reply(resp.status_code, body, resp.headers.get("content-type", "application/json"))

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxies(vllm_server: Any) -> Iterator[Any]:
    made: list[Proxy] = []

    def make(**kw: Any) -> Proxy:
        made.append(Proxy(vllm_server.url, **kw))
        made[-1].api_key = vllm_server.api_key
        return made[-1]

    yield make
    for p in made:
        p.close()


# -- the real server ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_base_and_adapters_give_different_greedy_outputs(vllm_backend: VLLMBackend) -> None:
    base, alpha, beta, alpha_latest = vllm_backend.generate([ask(None), ask("alpha@1"), ask("beta@1"), ask("alpha")])
    assert len({base.text, alpha.text, beta.text}) == 3, (base.text, alpha.text, beta.text)
    assert alpha_latest.text == alpha.text and alpha_latest.adapter == "alpha@1"  # "name" = latest version
    assert [r.adapter for r in (base, alpha, beta)] == [None, "alpha@1", "beta@1"]
    for r in (base, alpha, beta):
        assert r.backend == "vllm" and r.text.strip()
        assert r.prompt_tokens > 5 and 1 <= r.completion_tokens <= 24
        assert r.finish_reason in ("stop", "length") and r.latency_s > 0
    again = vllm_backend.generate([ask("beta@1")])[0]
    assert again.text == beta.text  # greedy is deterministic


def test_min_tokens_holds_back_the_end_of_a_reply(vllm_backend: VLLMBackend) -> None:
    """``min_tokens`` reaches vLLM (its extension of the OpenAI API): a reply that ends early is held to it, and
    starts with the reply given without it (what bench/serving.py relies on to compare equal work)."""
    msg = [{"role": "user", "content": "What is the capital of France?"}]  # a short reply
    free, held = vllm_backend.generate(
        [GenerationRequest(msg, max_tokens=48), GenerationRequest(msg, max_tokens=48, min_tokens=48)]
    )
    assert free.completion_tokens < 48 and free.finish_reason == "stop", free.text
    assert (held.completion_tokens, held.finish_reason) == (48, "length")
    assert held.text.startswith(free.text) and len(held.text) > len(free.text)


@pytest.mark.slow
def test_batch_keeps_request_order_and_ids(vllm_backend: VLLMBackend) -> None:
    refs = [None, "alpha@1", "beta@1", None, "beta@1", "alpha@1"]
    reqs = [ask(ref, max_tokens=8) for ref in refs]
    results = asyncio.run(vllm_backend.agenerate(reqs))
    assert [r.request_id for r in results] == [r.request_id for r in reqs]
    assert [r.adapter for r in results] == refs
    assert results[0].text == results[3].text and results[2].text == results[4].text


@pytest.mark.slow
def test_adapter_loaded_at_runtime_is_listed_and_used(
    vllm_server: Any, lora_adapters: dict[str, Path], tmp_path: Path
) -> None:
    # a copy under a name no other test uses, so the "not loaded yet" check holds whatever ran before
    shutil.copytree(lora_adapters["gamma@1"], tmp_path / "runtime-gamma@1")
    assert "runtime-gamma@1" not in served(vllm_server.url, vllm_server.api_key)
    backend = VLLMBackend([vllm_server.url], adapters=DirectoryAdapters(tmp_path), api_key=vllm_server.api_key)
    base, loaded = backend.generate([ask(None), ask("runtime-gamma")])
    assert loaded.adapter == "runtime-gamma@1"
    assert (
        served(vllm_server.url, vllm_server.api_key)["runtime-gamma@1"] == BASE
    )  # listed, with the base model as its parent
    assert loaded.text != base.text
    assert backend.generate([ask("runtime-gamma@1")])[0].text == loaded.text  # already loaded: used as is


@pytest.mark.slow
def test_unknown_adapter_is_a_clear_user_error(vllm_backend: VLLMBackend, vllm_server: Any) -> None:
    with pytest.raises(UserError, match="adapter 'no-such-adapter' not found"):
        vllm_backend.generate([ask("no-such-adapter")])
    bare = VLLMBackend([vllm_server.url], api_key=vllm_server.api_key)  # no resolver: only what the server lists
    with pytest.raises(UserError, match=r"'ghost@1' is not loaded on any vLLM server.*--lora-modules ghost@1="):
        bare.generate([ask("ghost@1")])
    assert bare.generate([ask("alpha", max_tokens=4)])[0].adapter == "alpha@1"  # listed: resolved to its version


@pytest.mark.slow
def test_server_without_runtime_loading_names_lora_modules(
    proxies: Any, lora_adapters: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(lora_adapters["gamma@1"], tmp_path / "blocked@1")
    proxy = proxies(hide_adapters=True, block_load=True)
    backend = VLLMBackend([proxy.url], adapters=DirectoryAdapters(tmp_path), api_key=proxy.api_key)
    with pytest.raises(UserError, match=r"does not allow loading adapters at runtime.*--lora-modules blocked@1="):
        backend.generate([ask("blocked")])
    assert proxy.counts["POST /v1/load_lora_adapter"] == 1 and proxy.counts["POST /v1/chat/completions"] == 0


@pytest.mark.slow
def test_json_schema_output_parses_and_matches(vllm_backend: VLLMBackend) -> None:
    prompt = [{"role": "user", "content": "Pick a colour and a digit. Answer in JSON."}]
    reqs = [GenerationRequest(prompt, adapter=a, max_tokens=64, json_schema=SCHEMA) for a in (None, "alpha@1")]
    for r in vllm_backend.generate(reqs):
        assert isinstance(r.json, dict), r.text
        assert set(r.json) == {"colour", "count"}
        assert r.json["colour"] in ("red", "green", "blue")
        assert isinstance(r.json["count"], int) and 0 <= r.json["count"] <= 9
        assert r.text == json.dumps(r.json) and r.finish_reason == "stop"  # the in-process format, exactly


@pytest.mark.slow
def test_stream_yields_the_greedy_text_in_pieces(vllm_backend: VLLMBackend) -> None:
    async def collect() -> list[str]:
        return [d async for d in vllm_backend.stream(ask("beta@1"))]

    deltas = asyncio.run(collect())
    assert len(deltas) > 3
    assert "".join(deltas) == vllm_backend.generate([ask("beta@1")])[0].text


@pytest.mark.slow
def test_retries_on_503_then_answers(vllm_backend: VLLMBackend, proxies: Any) -> None:
    proxy = proxies(fail_chat=2)
    backend = VLLMBackend([proxy.url], api_key=proxy.api_key)
    t0 = time.monotonic()
    r = backend.generate([ask("alpha@1")])[0]
    assert proxy.counts["POST /v1/chat/completions"] == 3  # two 503s, then the real answer
    assert r.text == vllm_backend.generate([ask("alpha@1")])[0].text
    # openai's backoff: 0.5 s then 1 s, less up to 25 % jitter
    assert r.latency_s >= 0.75 * (0.5 + 1.0) and time.monotonic() - t0 < 60

    proxy = proxies(fail_chat=100)
    backend = VLLMBackend([proxy.url], max_retries=2, api_key=proxy.api_key)
    with pytest.raises(RoloraRuntimeError, match=r"HTTP 503 after 3 tries: overloaded, try again"):
        backend.generate([ask(None)])
    assert proxy.counts["POST /v1/chat/completions"] == 3


@pytest.mark.slow
def test_no_retry_on_400_and_the_servers_message_is_kept(proxies: Any) -> None:
    proxy = proxies()
    backend = VLLMBackend([proxy.url], api_key=proxy.api_key)
    with pytest.raises(UserError, match=r"HTTP 400.*max_tokens=5000 cannot be greater than max_model_len=2048"):
        backend.generate([ask(None, max_tokens=5000)])
    assert proxy.counts["POST /v1/chat/completions"] == 1


@pytest.mark.slow
def test_adapter_affinity_and_spread_over_endpoints(proxies: Any, lora_adapters: dict[str, Path]) -> None:
    with_adapters = proxies()
    base_only = proxies(hide_adapters=True, block_load=True)  # an endpoint that lists no adapter
    backend = VLLMBackend(
        [base_only.url, with_adapters.url],
        adapters=DirectoryAdapters(lora_adapters["alpha@1"].parent),
        api_key=with_adapters.api_key,
    )
    results = backend.generate([ask("alpha@1", max_tokens=4) for _ in range(4)])
    assert all(r.adapter == "alpha@1" for r in results)
    assert with_adapters.counts["POST /v1/chat/completions"] == 4 and base_only.counts["POST /v1/chat/completions"] == 0
    backend.generate([ask(None, max_tokens=4) for _ in range(4)])
    assert base_only.counts["POST /v1/chat/completions"] == 2 and with_adapters.counts["POST /v1/chat/completions"] == 6
    assert base_only.counts["POST /v1/load_lora_adapter"] == 0


@pytest.mark.slow
def test_a_dead_endpoint_is_skipped_for_a_live_one(vllm_server: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    backend = VLLMBackend([dead, vllm_server.url], max_retries=0, api_key=vllm_server.api_key)
    results = backend.generate([ask(None, max_tokens=4), ask("alpha@1", max_tokens=4), ask("beta@1", max_tokens=4)])
    assert [r.adapter for r in results] == [None, "alpha@1", "beta@1"]
    assert backend.endpoints[0].down_until > time.monotonic()  # not tried again for down_for_s
    calls = backend.http_calls
    backend.generate([ask(None, max_tokens=4)])
    assert backend.http_calls == calls + 1  # straight to the live endpoint


@pytest.mark.slow
def test_the_server_needs_its_api_key(vllm_server: Any, lora_adapters: dict[str, Path], tmp_path: Path) -> None:
    """The test server runs with runtime LoRA loading, hence with an API key: a client without it gets nothing."""
    assert vllm_server.api_key and vllm_server.allow_runtime_lora
    shutil.copytree(lora_adapters["gamma@1"], tmp_path / "keyless@1")
    keyless = VLLMBackend([vllm_server.url], adapters=DirectoryAdapters(tmp_path))
    with pytest.raises(UserError, match=r"HTTP 401.*backend\.api_key_env"):
        keyless.generate([ask("keyless")])
    load = httpx.post(vllm_server.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
    assert load.status_code == 401 and "keyless@1" not in served(vllm_server.url, vllm_server.api_key)


# -- no server needed ----------------------------------------------------------------------------------------
def test_server_that_is_down_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    backend = VLLMBackend([url], max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(RoloraRuntimeError) as err:
        backend.generate([ask(None)])
    msg = str(err.value)
    assert url in msg and "not reachable" in msg and "rolora serve vllm" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10

    async def first_delta() -> None:
        async for _ in backend.stream(ask(None)):
            break

    with pytest.raises(RoloraRuntimeError, match="rolora serve vllm"):
        asyncio.run(first_delta())
    two = VLLMBackend([url, f"http://127.0.0.1:{free_port()}"], max_retries=0)
    with pytest.raises(BackendUnavailableError, match=r"no vLLM server is reachable .*rolora serve vllm"):
        two.generate([ask(None)])  # the error the API answers with 503 (a checkpointed run can be resumed)


def _fake_adapter(folder: Path, rank: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def _fake_model(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return model


def test_server_command_and_environment(tmp_path: Path) -> None:
    a = _fake_adapter(tmp_path / "ad" / "a@1")
    b = _fake_adapter(tmp_path / "ad" / "b@2", rank=32)
    server = VLLMServer(
        _fake_model(tmp_path),
        lora_modules={"a@1": a, "b@2": b},
        device="cpu",
        venv=tmp_path / "venv",
        port=8123,
        api_key="s3cret",
    )
    cmd = server.command()
    assert cmd[:3] == [str(tmp_path / "venv" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == str(tmp_path / "tiny-model")
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny-model"
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "32"  # raised to fit b@2
    i = cmd.index("--lora-modules")
    assert cmd[i + 1 : i + 3] == [f"a@1={a}", f"b@2={b}"]
    assert cmd[cmd.index("--dtype") + 1] == "float32" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert server.url == "http://127.0.0.1:8123"
    env = server.env()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(cmd)  # not visible in `ps`
    assert (
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
        not in VLLMServer(
            _fake_model(tmp_path / "m2"), device="cpu", venv=tmp_path / "venv", allow_runtime_lora=False
        ).env()
    )


def test_runtime_lora_loading_needs_an_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"runtime adapter loading .* needs an API key.*--no-runtime-lora"):
        VLLMServer(_fake_model(tmp_path), device="cpu", venv=tmp_path / "venv")
    from typer.testing import CliRunner

    from rolora.cli import app

    monkeypatch.delenv("ROLORA_VLLM_API_KEY", raising=False)
    monkeypatch.delenv("ROLORA_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no rolora.yaml: built-in defaults, no backend.api_key_env
    r = CliRunner().invoke(app, ["serve", "vllm"])
    assert isinstance(r.exception, UserError), r.output
    assert "needs an API key" in str(r.exception) and "backend.api_key_env" in str(r.exception)
    assert "\n" not in str(r.exception)
    r = CliRunner().invoke(app, ["serve", "vllm", "--api-key-env", "ROLORA_VLLM_API_KEY"])
    assert isinstance(r.exception, UserError) and "$ROLORA_VLLM_API_KEY is not set" in str(r.exception)


def test_lora_modules_from_dir(tmp_path: Path) -> None:
    _fake_adapter(tmp_path / "x@1")
    _fake_adapter(tmp_path / "y@3")
    (tmp_path / "notes").mkdir()  # no adapter_config.json: not an adapter, skipped
    assert sorted(lora_modules_from_dir(tmp_path)) == ["x@1", "y@3"]
    with pytest.raises(UserError, match="no adapter folder"):
        lora_modules_from_dir(tmp_path / "notes")
    (tmp_path / "z@1").mkdir()
    (tmp_path / "z@1" / "adapter_config.json").write_text("{}")
    (tmp_path / "z@1" / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="pickle"):
        lora_modules_from_dir(tmp_path)


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = VLLMServer(_fake_model(tmp_path), port=port, python=Path(sys.executable), device="cpu", api_key="k")
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            server.start()


_FAKE_SERVER = """
import http.server, subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[2], "w").write(str(child.pid))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class _ScriptServer(VLLMServer):
    """Runs a script in place of vLLM, to drive the launcher's process handling."""

    script: ClassVar[list[str]] = []

    def command(self) -> list[str]:
        return self.script


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_terminates_then_kills_the_process_group(tmp_path: Path) -> None:
    port = free_port()
    server = _ScriptServer(_fake_model(tmp_path), port=port, python=Path(sys.executable), device="cpu", api_key="k")
    server.log_file = tmp_path / "server.log"
    server.script = [sys.executable, "-c", _FAKE_SERVER, str(port), str(tmp_path / "child.pid")]
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    assert server.wait_ready(timeout=30) < 30
    child = int((tmp_path / "child.pid").read_text())
    assert _alive(pid) and _alive(child)
    t0 = time.monotonic()
    server.stop(timeout=1)  # the child ignores SIGTERM: it is killed after the timeout
    assert not _alive(pid) and not _alive(child)
    assert time.monotonic() - t0 < 10 and server.proc is None


def test_wait_ready_reports_why_the_server_exited(tmp_path: Path) -> None:
    server = _ScriptServer(
        _fake_model(tmp_path), port=free_port(), python=Path(sys.executable), device="cpu", api_key="k"
    )
    server.log_file = tmp_path / "server.log"
    server.script = [sys.executable, "-c", "print('ValueError: --max-lora-rank is too small'); raise SystemExit(3)"]
    server.start()
    with pytest.raises(RoloraRuntimeError, match=r"exited with code 3 .*ValueError: --max-lora-rank is too small"):
        server.wait_ready(timeout=30)
    server.stop()


def test_serve_cli_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rolora.cli import app\n"
        "r = CliRunner().invoke(app, ['serve', 'vllm', '--help'])\n"
        "assert r.exit_code == 0 and '--adapters-dir' in r.output, r.output\n"
        "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'httpx', 'faiss') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_backend_settings_come_from_rolora_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rolora.config import load_config

    cfg_file = tmp_path / "rolora.yaml"
    cfg_file.write_text(
        "backend:\n  kind: vllm\n  endpoints: [http://127.0.0.1:9]\n  timeout_s: 7\n  max_retries: 1\n"
        "  api_key_env: MY_VLLM_KEY\n"
    )
    monkeypatch.setenv("MY_VLLM_KEY", "k-123")
    backend = VLLMBackend.from_config(load_config(cfg_file))
    assert backend.timeout.read == 7 and backend.max_retries == 1 and backend._api_key == "k-123"
    monkeypatch.delenv("MY_VLLM_KEY")
    with pytest.raises(UserError, match=r"backend\.api_key_env names \$MY_VLLM_KEY, which is not set"):
        VLLMBackend.from_config(load_config(cfg_file))
