"""A real ``rolora serve api`` process on loopback for the soak and load benchmarks (not a benchmark itself).

It writes a config (the sample contracts, the in-process backend, a SQLite checkpointer, two API keys) into a work
folder, ingests the corpus once, starts the server as its own process and samples its resident memory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "contracts"
KEYS = {"tenant-a": "bench-key-a", "tenant-b": "bench-key-b"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(work: Path, home: Path, port: int, agent: dict[str, Any] | None = None, **api: Any) -> Path:
    cfg = {
        "home": str(home),
        "domains": {
            "contracts": {
                "corpus": [str(EXAMPLES)],
                "exclude": ["qa*.jsonl"],
                "qa": str(EXAMPLES / "qa.jsonl"),
                # the example's shipped analyst where the home has it promoted (make demo); else the base model
                "roles": {"analyst": {"adapter": "contracts-analyst"}},
            }
        },
        "agent": {**(agent or {}), "checkpointer": "sqlite", "checkpoint_path": str(work / "runs.sqlite")},
        "api": {
            "port": port,
            "keys": [{"key": key, "domains": ["contracts"], "name": name} for name, key in KEYS.items()],
            **api,
        },
    }
    path = work / "rolora.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ApiServer:
    """``rolora serve api`` in its own process group; ``url``, ``pid``; stopped by :meth:`stop`."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "rolora.cli", "serve", "api", "--config", str(config), "--port", str(port)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 600) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API server exited ({self.proc.returncode}); see {self._log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the API server was not ready in {timeout:.0f} s; see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def start(
    prefix: str, home: Path | None, out: Path | None, agent: dict[str, Any] | None = None, **api: Any
) -> tuple[Path, ApiServer]:
    """The output folder (default: a new work folder) and a server on a free loopback port, its home prepared and
    ingested; ``agent``: settings of the ``agent:`` section (validated by the server like any ``rolora.yaml``)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    out = out or work
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(work, home.resolve() if home else work / "home", port, agent, **api)
    ingest(config)
    return out, ApiServer(config, port, work / "server.log")


def ingest(config: Path) -> None:
    """The model prepared and the corpus indexed once (both cached in the home)."""
    for cmd in (["models", "prepare"], ["ingest"]):
        subprocess.run([sys.executable, "-m", "rolora.cli", *cmd, "--config", str(config)], check=True)


def agent_settings(pairs: list[str]) -> dict[str, Any]:
    """``--agent KEY=VALUE`` options as the ``agent:`` section (values read as YAML: ``k=3``, ``use_critic=false``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--agent {pair!r}: expected KEY=VALUE, e.g. --agent k=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def questions() -> list[str]:
    """The sample corpus's questions plus general-knowledge ones (refused by the relevance gate, no model call)."""
    import json

    rows = [json.loads(line) for line in (EXAMPLES / "qa.jsonl").read_text(encoding="utf-8").splitlines() if line]
    off_topic = ["What is the capital of Australia?", "How many legs does a spider have?", "Who wrote Hamlet?"]
    return [r["question"] for r in rows] + off_topic
