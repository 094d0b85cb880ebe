"""`cope.hub`: the one place that finds checkpoints, reads config.json and writes files atomically."""

from __future__ import annotations

import pytest
import torch

from cope.errors import CopeInputError
from cope.hub import (
    atomic_path,
    atomic_write_text,
    is_hub_id,
    load_safetensors,
    read_json,
    resolve_directory,
    save_safetensors,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("llava-hf/LLaVA-Video-7B-Qwen2-hf", True),
        ("gpt2", True),  # legacy ids without an organisation
        ("org/name/extra", False),
        ("/abs/path", False),
        ("./relative", False),
        ("~/model", False),
        ("org/na me", False),
    ],
)
def test_hub_id_shape(name, expected):
    assert is_hub_id(name) is expected


def test_resolve_directory_local_missing_and_offline(tmp_path, monkeypatch):
    import huggingface_hub

    assert resolve_directory(tmp_path) == tmp_path
    (tmp_path / "file").write_text("x")
    with pytest.raises(CopeInputError, match="not a directory"):
        resolve_directory(tmp_path / "file")
    with pytest.raises(CopeInputError, match="no such model directory"):
        resolve_directory(tmp_path / "missing")

    def offline(repo_id, allow_patterns=None):
        raise OSError("We couldn't connect to the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CopeInputError, match="org/model: not a local directory, and the Hugging Face Hub"):
        resolve_directory("org/model")


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(CopeInputError, match="missing.json: no such file"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CopeInputError, match="bad.json: not a readable JSON file"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(CopeInputError, match="list.json: expected a JSON object"):
        read_json(tmp_path / "list.json")


def test_safetensors_round_trip_and_corrupt_file(tmp_path):
    tensors = {
        "a": torch.arange(6).view(2, 3).t(),
        "b": torch.ones(2, dtype=torch.bfloat16),
    }  # "a" not contiguous
    save_safetensors(tensors, tmp_path / "w.safetensors")
    loaded = load_safetensors(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CopeInputError, match="junk.safetensors: not a readable safetensors file"):
        load_safetensors(tmp_path / "junk.safetensors")
