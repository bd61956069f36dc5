"""Past one process: two real `rolora serve api` workers (subprocesses on loopback) share a real PostgreSQL server
(Debian's `postgresql`, started here with initdb/pg_ctl in a temp folder as a non-root user) as their checkpointer.
A run started through one worker, paused before finalise for human review, is read and resumed through the other;
another API key gets 404 for that thread on both. The question is off topic, so each run is the relevance gate's
refusal (no model call) and the test's time is the workers' start."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import EXAMPLES, REPO, TEST_HOME, missing_real_part
from vllm_fixture import free_port

pytestmark = pytest.mark.slow

A_KEY, B_KEY = "key-pg-tenant-a", "key-pg-tenant-b"
OFF_TOPIC = "What is the boiling point of liquid nitrogen in degrees Kelvin?"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or shutil.which("pg_ctl", path=str(Path(found[-1]).parent)) is None:
        missing_real_part(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb)",
            "install Debian's package: apt-get install postgresql (`make test` does)",
        )
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port; its data folder is removed afterwards."""
    try:
        import langgraph.checkpoint.postgres.aio  # noqa: F401
    except ImportError:
        missing_real_part("langgraph-checkpoint-postgres is not installed", "pip install -e '.[postgres]'")
    bin_dir = _pg_bin()
    data = Path(tempfile.mkdtemp(prefix="rolora-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "nobody")
        run_as = ["runuser", "-u", "nobody", "--"]
    port = free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "rolora", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        env=env,
    )
    opts = f"-p {port} -h 127.0.0.1 -k {data} -c fsync=off"
    started = subprocess.run(
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-o", opts, "-w", "start"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert started.returncode == 0, started.stdout + started.stderr + (data / "log").read_text()
    try:
        yield f"postgresql://rolora@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
            capture_output=True,
            env=env,
        )
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def workers(config: Path, n: int, log_dir: Path) -> Iterator[list[str]]:
    """``n`` `rolora serve api` processes on free loopback ports, started together; their base URLs once up."""
    ports = [free_port() for _ in range(n)]
    procs = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for i, port in enumerate(ports):
        log = open(log_dir / f"worker{i}.log", "w")  # noqa: SIM115  (closed below)
        cmd = [sys.executable, "-m", "rolora.cli", "serve", "api", "--config", str(config), "--port", str(port)]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 600
        for i, (url, (proc, _)) in enumerate(zip(urls, procs, strict=True)):
            while True:
                assert proc.poll() is None, (log_dir / f"worker{i}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"{url} did not come up"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                time.sleep(0.5)
        yield urls
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def test_a_run_started_on_one_worker_resumes_on_the_other(
    postgres_url: str, examples_retriever: Any, generator_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "rolora.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "home": str(TEST_HOME),
                "domains": {"contracts": {"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]}},
                "agent": {
                    "max_iterations": 1,
                    "use_critic": False,
                    "checkpointer": "postgres",
                    "postgres_url": postgres_url,
                    "interrupt_before_finalise": True,
                },
                "api": {
                    "keys": [
                        {"key": A_KEY, "domains": ["contracts"], "name": "tenant-a"},
                        {"key": B_KEY, "domains": ["contracts"], "name": "tenant-b"},
                    ]
                },
            }
        )
    )
    a, b = {"Authorization": f"Bearer {A_KEY}"}, {"Authorization": f"Bearer {B_KEY}"}
    with workers(config, 2, tmp_path) as (one, two), httpx.Client(timeout=300) as http:
        started = http.post(
            one + "/v1/ask", json={"question": OFF_TOPIC, "domain": "contracts", "thread_id": "pg-1"}, headers=a
        )
        assert started.status_code == 202, started.text  # paused for review: the caller's own thread id, no internals
        assert started.json() == {"thread_id": "pg-1", "status": "paused", "next": ["finalise"]}

        seen = http.get(two + "/v1/threads/pg-1", headers=a)  # the other process reads the same run
        assert seen.status_code == 200, seen.text
        assert seen.json()["status"] == "paused" and seen.json()["next"] == ["finalise"]
        for url in (one, two):  # another key: no such thread, on either worker
            for r in (
                http.get(url + "/v1/threads/pg-1", headers=b),
                http.post(url + "/v1/threads/pg-1/resume", json={}, headers=b),
            ):
                assert r.status_code == 404 and r.json()["detail"] == "no run with thread id 'pg-1'", r.text

        resumed = http.post(two + "/v1/threads/pg-1/resume", json={}, headers=a)
        assert resumed.status_code == 200, resumed.text
        answer = resumed.json()
        assert answer["thread_id"] == "pg-1" and answer["not_found"] and answer["answer"]
        assert [s["node"] for s in answer["trace"]] == ["route", "finalise"]  # route ran once, on worker one

        done = http.get(one + "/v1/threads/pg-1", headers=a)  # and worker one sees it finished
        assert done.status_code == 200 and done.json()["status"] == "done"
        assert done.json()["answer"]["answer"] == answer["answer"]
