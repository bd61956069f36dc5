"""Config: validated once, one-line errors naming the key path, env overrides, shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rolora.cli import app
from rolora.config import default_config_text, load_config
from rolora.errors import ConfigError

from conftest import REPO


def test_default_config_loads_and_resolves_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLORA_HOME", raising=False)
    p = tmp_path / "rolora.yaml"
    p.write_text(default_config_text())
    cfg = load_config(p)
    assert cfg.domain("contracts").corpus == [tmp_path / "examples/contracts"]
    assert cfg.retrieval.mode == "hybrid" and cfg.models.generator == "smollm2-135m-instruct"


def test_unknown_key_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "rolora.yaml"
    p.write_text("retrieval:\n  chunk_max_chars: 800\n  modee: dense\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "retrieval.modee" in msg and "unknown key" in msg and "\n" not in msg


def test_bad_value_names_the_path_and_value(tmp_path: Path) -> None:
    p = tmp_path / "rolora.yaml"
    p.write_text("retrieval:\n  index: annoy\ndomains:\n  Bad Name: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "retrieval.index" in msg and "'annoy'" in msg and "Bad Name" in msg


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "rolora.yaml"
    p.write_text("retrieval: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="rolora init"):
        load_config(tmp_path / "nope.yaml")


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLORA_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("ROLORA_EMBEDDER", "some/folder")
    monkeypatch.setenv("ROLORA_BACKEND", "vllm")
    cfg = load_config(None)
    assert cfg.home_dir == tmp_path / "h" and cfg.models.embedder == "some/folder" and cfg.backend.kind == "vllm"
    monkeypatch.setenv("ROLORA_BACKEND", "tgi")
    with pytest.raises(ConfigError, match=r"backend\.kind"):
        load_config(None)


def test_unknown_domain_lists_configured(tmp_path: Path) -> None:
    cfg = load_config(None)
    with pytest.raises(ConfigError, match="configured: contracts"):
        cfg.domain("medical")


def test_init_writes_a_loadable_commented_file(tmp_path: Path) -> None:
    target = tmp_path / "rolora.yaml"
    res = CliRunner().invoke(app, ["init", str(target)])
    assert res.exit_code == 0, res.output
    assert target.read_text().startswith("# rolora configuration")
    load_config(target)
    again = CliRunner().invoke(app, ["init", str(target)])
    assert again.exit_code != 0 and "--force" in again.output


def test_every_shipped_yaml_config_loads() -> None:
    """Every rolora.yaml-style file shipped in the repo (walking subfolders) validates."""
    found = [p for p in REPO.rglob("rolora*.yaml") if ".venv" not in p.parts and "build" not in p.parts]
    for p in found:
        load_config(p)


def test_fusion_weights_follow_the_fusion(tmp_path: Path) -> None:
    """The default hybrid fusion is the one measured best on CUAD's validation split (convex 0.6:0.4); choosing RRF
    without weights means RRF 1:1, not RRF with the convex weights; given weights always win."""
    from rolora.config import RetrievalConfig

    d = RetrievalConfig()
    assert (d.fusion, d.dense_weight, d.lexical_weight) == ("convex", 0.6, 0.4)
    r = RetrievalConfig(fusion="rrf")
    assert (r.dense_weight, r.lexical_weight) == (1.0, 1.0)
    assert RetrievalConfig(fusion="rrf", dense_weight=2.0).dense_weight == 2.0
    path = tmp_path / "rolora.yaml"
    path.write_text("retrieval:\n  fusion: rrf\n", encoding="utf-8")
    assert load_config(path).retrieval.lexical_weight == 1.0
