"""The install maps the repo folders under one namespace; the CLI starts without heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_package_dir_mapping(tmp_path: Path) -> None:
    code = (
        "import rolora.agents, rolora.adapters, rolora.retrieval, rolora.evals, pathlib;"
        "print(pathlib.Path(rolora.retrieval.__file__).parent.name, pathlib.Path(rolora.evals.__file__).parent.name)"
    )
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["retrieval", "evals"]
    for name in ("agents", "adapters", "retrieval", "evals"):
        res = _run(f"import {name}", tmp_path)
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, f"top-level '{name}' must stay free"


def test_cli_help_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rolora.cli import app\n"
        "for args in (['--help'], ['search', '--help'], ['ingest', '--help'], ['models', '--help']):\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'faiss', 'sentence_transformers') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_readme_opens_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_code = text.split("```", 2)[1]
    assert "make demo" in first_code and "make test" in first_code
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
