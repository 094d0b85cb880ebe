"""Checkpoint files: where a checkpoint is, reading its config.json, writing files atomically.

Every checkpoint of the project is a directory with ``config.json`` and ``*.safetensors`` (never
pickles, never ``trust_remote_code``), named by a local path or a Hugging Face Hub id.
``resolve_directory`` turns either into a local directory; ``read_json`` reads a config with
one-line errors. Writers go through ``atomic_path``: the bytes go to a hidden temporary name in
the target's folder, which is renamed over the target only once complete, so a crash or a kill
never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cope.errors import CopeInputError

# "name" or "org/name": letters, digits, ".", "_", "-" (the Hub's own rule for repo ids).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Hub repo id (it says nothing about the repo existing)."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~"))


def resolve_directory(path_or_id: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local directory as given, or a Hub repo downloaded to the local cache (only the files
    matching ``allow_patterns`` when given). One-line ``CopeInputError`` otherwise."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CopeInputError(f"{path_or_id}: not a directory (a checkpoint is a directory with config.json)")
    name = str(path_or_id)
    if not is_hub_id(name):
        raise CopeInputError(f"{name}: no such model directory")
    import huggingface_hub

    try:
        if allow_patterns is None:
            return Path(huggingface_hub.snapshot_download(name))
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=allow_patterns))
    except Exception as exc:  # offline, unknown or gated repo, auth: all mean "cannot get it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CopeInputError(
            f"{name}: not a local directory, and the Hugging Face Hub could not provide it ({reason})"
        ) from exc


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``, with one-line errors naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CopeInputError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CopeInputError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise CopeInputError(f"{path}: expected a JSON object")
    return data


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds, delete
    it when the block fails (an exception, Ctrl-C). The name carries the pid, so two writers of the
    same file never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``data`` under ``path``, synced to disk before the rename (a crash leaves old or new, whole)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Contiguous CPU copies of ``tensors`` (name → torch.Tensor) written atomically as safetensors."""
    from safetensors.torch import save_file

    plain = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={"format": "pt", **(metadata or {})})


def load_safetensors(path: str | os.PathLike) -> dict:
    """name → torch.Tensor from a safetensors file, with one-line errors naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CopeInputError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CopeInputError(f"{path}: not a readable safetensors file ({exc})") from exc
