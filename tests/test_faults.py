"""Faults survived on the real parts: the vLLM server going away mid-run (a real vLLM-CPU server behind a loopback
relay that stops after the first model call), and a full disk (a real size-limited tmpfs) during an ingest and
during an adapter registration. Each ends in one clear line and leaves the last good state; the run resumes and the
ingest or registration succeeds once the fault is gone."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from rolora.errors import RoloraRuntimeError, UserError

from conftest import EXAMPLES, TEST_HOME, make_config, missing_real_part
from vllm_fixture import free_port


# -- a small real disk ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only): a real file system that fills up. Without the
    capability it skips locally and fails under CI (which runs as root)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        missing_real_part(f"mounting a {size} tmpfs needs root (running as uid {os.geteuid()})", "run as root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        missing_real_part(f"mount -t tmpfs failed: {mounted.stderr.decode().strip()}", "run as root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full (64 KiB, then 4 KiB blocks: nothing usable is left)."""
    with open(path, "ab", buffering=0) as f:
        for block in (1 << 16, 1 << 12):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


def write_corpus(root: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    vocab = "party term renewal notice payment invoice cap liability assignment audit insurance delaware".split()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{seed}-{i:03d}.txt").write_text(f"{i}. Clause {i}\n{' '.join(rng.choices(vocab, k=150))}.\n")


def one_line_naming(e: BaseException, path: Path) -> str:
    msg = str(e)
    assert "\n" not in msg and str(path) in msg and "free space" in msg, msg
    return msg


@pytest.mark.slow
@pytest.mark.parametrize("where", ["store", "index"])
def test_disk_full_during_ingest_keeps_the_last_good_state(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """``store``: the disk is full before the ingest (SQLite fails caching the new vectors); ``index``: it fills up
    while the new generation's FAISS file is written (inside the store's transaction). Either way: one line naming the
    domain's folder and "free space", no temp folder left, searches answer from the last good state even while the
    disk is still full, and the same ingest succeeds once space is freed."""
    import rolora.retrieval.ingest as ingest_mod
    from rolora.retrieval import Retriever

    with small_disk(tmp_path / "disk", "3m") as disk:
        corpus = tmp_path / "corpus"
        write_corpus(corpus, 3, seed=1)
        cfg = make_config(disk / "home", d={"corpus": [str(corpus)]})
        r = Retriever("d", cfg, embedder)
        r.ingest(progress=False)
        before = [(p.chunk_id, round(p.score, 5)) for p in r.search("renewal notice", k=3)]
        dom = disk / "home" / "indexes" / "d"
        manifest = (dom / "manifest.json").read_text()
        write_corpus(corpus, 30, seed=2)
        filler = disk / "filler"
        if where == "store":
            fill(filler)
        else:
            write_folder = ingest_mod.write_generation_folder

            def full_then_write(*args: Any, **kw: Any) -> Any:
                fill(filler)
                return write_folder(*args, **kw)

            monkeypatch.setattr(ingest_mod, "write_generation_folder", full_then_write)
        with pytest.raises(UserError) as e:
            r.ingest(progress=False)
        print(one_line_naming(e.value, dom))
        assert (dom / "manifest.json").read_text() == manifest
        assert len(list(dom.glob("gen-*"))) == 1 and not list(dom.glob(".gen-tmp-*"))
        assert not [p for p in dom.iterdir() if p.name.endswith(".tmp")]
        still_full = Retriever("d", cfg, embedder)  # a new reader, the disk still full
        assert [(p.chunk_id, round(p.score, 5)) for p in still_full.search("renewal notice", k=3)] == before
        assert still_full.stats()["documents"] == 3
        still_full.close()

        monkeypatch.undo()
        filler.unlink()
        rep = r.ingest(progress=False)
        assert rep.documents_added == 30 and Retriever("d", cfg, embedder).stats()["documents"] == 33
        r.close()


@pytest.mark.slow
def test_disk_full_while_finishing_an_interrupted_ingest(tmp_path: Path, embedder: Any) -> None:
    """A search that must rebuild the indexes from the store (an ingest killed between its commit and the manifest
    switch) on a full disk: one line naming the folder and "free space" (a fresh process cannot even open the WAL
    store there: the same line); once space is freed the search works."""
    from rolora.retrieval import Retriever

    with small_disk(tmp_path / "disk", "3m") as disk:
        corpus = tmp_path / "corpus"
        write_corpus(corpus, 3, seed=3)
        cfg = make_config(disk / "home", d={"corpus": [str(corpus)]})
        r = Retriever("d", cfg, embedder)
        r.ingest(progress=False)
        expected = [p.chunk_id for p in r.search("audit insurance", k=3)]
        r.close()
        dom = disk / "home" / "indexes" / "d"
        (dom / "manifest.json").unlink()  # as if killed before the manifest switch
        for gen in dom.glob("gen-*"):
            shutil.rmtree(gen)
        fill(disk / "filler")
        with pytest.raises(UserError) as e:  # nothing has the store open: SQLite cannot even open it (WAL files)
            Retriever("d", cfg, embedder)
        assert "to open the store" in one_line_naming(e.value, dom)
        (disk / "filler").unlink()
        opened = Retriever("d", cfg, embedder)
        fill(disk / "filler")
        with pytest.raises(UserError) as e:  # open before the disk filled up: the rebuild cannot be written
            opened.search("audit insurance", k=3)
        assert "rebuilding the index" in one_line_naming(e.value, dom)
        opened.close()
        assert not list(dom.glob(".gen-tmp-*")) and not list(dom.glob("gen-*"))
        (disk / "filler").unlink()
        assert [p.chunk_id for p in Retriever("d", cfg, embedder).search("audit insurance", k=3)] == expected


def _sha(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


def test_disk_full_during_adapter_registration(
    tmp_path: Path, generator_dir: Path, lora_adapters: dict[str, Path]
) -> None:
    """The registry's disk holds one adapter but not two: registering the second (moved from another disk) is one
    line naming the registry and "free space"; no version or temp folder appears, the source folder keeps every
    file, version 1 still resolves (its hashes verified), and after freeing space the registration succeeds."""
    from rolora.adapters.registry import Registry

    src = lora_adapters["alpha@1"]
    size = sum(f.stat().st_size for f in src.iterdir() if f.is_file())
    with small_disk(tmp_path / "disk", f"{(2 * size) // 1024 + 128}k") as disk:
        root = disk / "adapters"
        reg = Registry(root, generator_dir)
        first = reg.register(src, "fault-analyst", "analyst", "contracts", generator_dir)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (size // 2))  # what is left now holds half an adapter
        moving = shutil.copytree(src, tmp_path / "moving")
        want = _sha(moving)
        with pytest.raises(UserError) as e:
            reg.register(moving, "fault-analyst", "analyst", "contracts", generator_dir, move=True)
        print(one_line_naming(e.value, root))
        assert reg.versions("fault-analyst") == [1]
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".registry")) == ["fault-analyst@1"]
        assert _sha(moving) == want  # a failed move gives every file back
        assert reg.resolve("fault-analyst@1")[1] == first.path  # its recorded hashes verified

        filler.unlink()
        again = reg.register(moving, "fault-analyst", "analyst", "contracts", generator_dir, move=True)
        assert again.version == 2 and _sha(again.path)["adapter_model.safetensors"] == want["adapter_model.safetensors"]


# -- the vLLM server gone mid-run ----------------------------------------------------------------------------------
class Relay:
    """An HTTP pass-through on a fixed loopback port to the real vLLM server. ``start(stop_after=n)``: after n chat
    completions it closes its port (before answering the last one, so no later request slips in): the server is gone,
    connections are refused. ``start()`` again opens the same port."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.chats: list[int] = []  # chat completions relayed, per life of the relay
        self.stopped = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    def start(self, stop_after: int | None = None) -> None:
        relay = self
        life = len(self.chats)
        self.chats.append(0)
        self.stopped.clear()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                headers = {"Content-Type": "application/json"}
                if self.headers.get("Authorization"):
                    headers["Authorization"] = self.headers["Authorization"]
                resp = httpx.request(method, relay.upstream + self.path, content=raw, headers=headers, timeout=300)
                if method == "POST" and self.path.startswith("/v1/chat/completions"):
                    relay.chats[life] += 1
                    if relay.chats[life] == stop_after:
                        relay.stop()
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections at once; the serving thread ends shortly after."""
        import socket

        server = self.server
        assert server is not None
        with contextlib.suppress(OSError):
            server.socket.shutdown(socket.SHUT_RDWR)  # out of LISTEN: new connections are refused from now on

        def close() -> None:
            server.shutdown()
            server.server_close()
            self.stopped.set()

        threading.Thread(target=close, daemon=True).start()


@pytest.mark.slow
def test_vllm_server_gone_mid_run_then_the_run_resumes(
    vllm_server: Any, examples_retriever: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The query writer's call goes through, then the server is gone: the analyst's call fails after the bounded
    retries with one line naming the endpoint and what to do. With the server back on the same address,
    ``Agent.resume`` finishes the same thread from its checkpoint: route and retrieval (and the query writer's call)
    are not run again. The same through the API: 503 saying the model server is not reachable, then
    ``POST /v1/threads/{id}/resume`` finishes the run."""
    from fastapi.testclient import TestClient

    from rolora.agents import ADAPTERS_BASE, Agent
    from rolora.config import Config
    from rolora.service import create_app

    relay = Relay(vllm_server.url)
    relay.start(stop_after=1)
    monkeypatch.setenv("ROLORA_TEST_VLLM_KEY", vllm_server.api_key)
    cfg = Config.model_validate(
        {
            "home": str(TEST_HOME),
            "domains": {"contracts": {"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]}},
            "backend": {
                "kind": "vllm",
                "endpoints": [relay.url],
                "max_retries": 1,
                "timeout_s": 120,
                "api_key_env": "ROLORA_TEST_VLLM_KEY",
            },
            "agent": {
                "k": 3,
                "max_queries": 1,
                "max_iterations": 1,
                "use_critic": False,
                "use_query_writer": True,
                "typed_reader": False,  # the law is otherwise read from the passages without a model call
                "checkpoint_path": str(tmp_path / "runs.sqlite"),
            },
        }
    )
    question = "Which law governs the Mutual Non-Disclosure Agreement between Halvorsen Geospatial and Quillfeather?"

    def check(trace: list[dict[str, Any]]) -> None:
        nodes = [s["node"] for s in trace]
        assert nodes.count("route") == 1 and nodes[-1] == "finalise" and "analyse" in nodes
        roles = [s["role"] for s in trace if s["role"]]
        assert roles.count("query_writer") == 1 and "analyst" in roles  # the writer's call is not made again

    try:
        with Agent.from_config(cfg, adapters=ADAPTERS_BASE) as agent:
            t0 = time.monotonic()
            with pytest.raises(RoloraRuntimeError) as e:
                agent.ask(question, "contracts", thread_id="gone-mid-run")
            msg = str(e.value)
            print(msg, f"({time.monotonic() - t0:.1f} s)")
            assert relay.stopped.wait(10) and relay.chats == [1]
            assert "\n" not in msg and relay.url in msg and "not reachable" in msg and "rolora serve vllm" in msg
            state = agent.state("gone-mid-run")
            assert state["next"] == ["analyse"] and state["values"]["passages"]
            relay.start()  # the server is back, same address
            answer = agent.resume("gone-mid-run")
        assert answer.thread_id == "gone-mid-run" and relay.chats[1] >= 1
        check([s.model_dump() for s in answer.trace])

        relay.stop()
        assert relay.stopped.wait(10)
        relay.start(stop_after=1)
        app = create_app(cfg, lambda config: Agent.from_config(config, adapters=ADAPTERS_BASE))
        with TestClient(app) as api:
            asked = api.post("/v1/ask", json={"question": question, "domain": "contracts", "thread_id": "api-gone"})
            assert asked.status_code == 503 and "model server is not reachable" in asked.json()["detail"], asked.text
            assert relay.stopped.wait(10)
            assert api.get("/v1/threads/api-gone").json()["next"] == ["analyse"]
            relay.start()
            resumed = api.post("/v1/threads/api-gone/resume", json={})
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["thread_id"] == "api-gone" and relay.chats[3] >= 1
        check(resumed.json()["trace"])
    finally:
        if relay.server is not None and not relay.stopped.is_set():
            relay.stop()
