"""Supply chain: an adapter's files are the bytes recorded (sha256) when it was registered, checked on every load —
by the registry (``resolve``, ``export_merged``) and by the in-process backend right before PEFT reads them.

The tampering is real: one byte inside a LoRA weight tensor of a real adapter file is changed, so the file is still
a valid safetensors file that PEFT would load without a word."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from rolora.adapters.export import export_merged
from rolora.adapters.registry import Registry
from rolora.adapters.serving import DirectoryAdapters, GenerationRequest
from rolora.adapters.serving.base import verify_adapter_files
from rolora.errors import RoloraRuntimeError

NAME = "integrity-analyst"


def _flip_weight_byte(path: Path) -> bytes:
    """Change one byte of the first tensor's data (past the safetensors header); returns the original bytes."""
    original = path.read_bytes()
    header_len = struct.unpack("<Q", original[:8])[0]
    json.loads(original[8 : 8 + header_len])  # a real safetensors header
    data = bytearray(original)
    data[8 + header_len + 3] ^= 0x40
    path.write_bytes(bytes(data))
    return original


@pytest.fixture()
def registered(tmp_path: Path, lora_adapters: dict[str, Path], generator_dir: Path) -> tuple[Registry, Path]:
    reg = Registry(tmp_path / "adapters")
    rec = reg.register(lora_adapters["alpha@1"], NAME, "analyst", "contracts", generator_dir)
    return reg, rec.path / "adapter_model.safetensors"


def test_registry_refuses_an_adapter_whose_bytes_changed(
    registered: tuple[Registry, Path], generator_dir: Path
) -> None:
    reg, weights = registered
    assert reg.resolve(f"{NAME}@1")[0] == f"{NAME}@1"
    original = _flip_weight_byte(weights)
    with pytest.raises(RoloraRuntimeError) as err:
        reg.resolve(f"{NAME}@1")
    msg = str(err.value)
    assert f"adapter '{NAME}@1'" in msg and "adapter_model.safetensors" in msg and "recorded" in msg
    assert "`rolora train --role analyst --domain contracts`" in msg and "\n" not in msg
    with pytest.raises(RoloraRuntimeError, match=r"adapter_model\.safetensors has sha256"):
        reg(f"{NAME}@1")  # the AdapterResolver the backends use
    with pytest.raises(RoloraRuntimeError, match=r"adapter_model\.safetensors has sha256"):
        export_merged(reg, f"{NAME}@1", reg.root.parent / "merged", generator_dir)
    weights.write_bytes(original)  # restored: the same bytes load again
    assert reg.resolve(f"{NAME}@1")[0] == f"{NAME}@1"


def test_missing_recorded_file_is_refused(registered: tuple[Registry, Path]) -> None:
    reg, weights = registered
    (weights.parent / "adapter_config.json").unlink()
    with pytest.raises(Exception, match=r"adapter_config\.json"):
        reg.resolve(f"{NAME}@1")
    verify_adapter_files("plain@1", weights.parent.parent / "no-manifest")  # nothing recorded: nothing to check


@pytest.mark.slow
def test_inprocess_backend_checks_the_bytes_right_before_loading(
    registered: tuple[Registry, Path], generator_dir: Path
) -> None:
    from rolora.adapters.serving.inprocess import InProcessBackend

    reg, weights = registered
    # A resolver that does not check anything (plain folders): the backend still refuses the changed bytes.
    backend = InProcessBackend(generator_dir, DirectoryAdapters(reg.root), micro_batching=False)
    try:
        original = _flip_weight_byte(weights)
        req = GenerationRequest([{"role": "user", "content": "Hi"}], adapter=f"{NAME}@1", max_tokens=2)
        with pytest.raises(RoloraRuntimeError, match=rf"adapter '{NAME}@1': adapter_model.safetensors has sha256"):
            backend.generate([req])
        assert backend.loaded_adapters == []
        weights.write_bytes(original)
        assert backend.generate([req])[0].adapter == f"{NAME}@1"
    finally:
        backend.close()
    shutil.rmtree(reg.root)
