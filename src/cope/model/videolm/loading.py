"""Finding and loading what a ``--model`` argument names: a CoPE checkpoint or a bare base model.

Accepted forms:
* a local CoPE checkpoint directory (``config.json`` with ``cope_version``);
* a local LLaVA-OneVision directory (HF ``save_pretrained`` output, ``model_type`` llava_onevision);
* a Hugging Face Hub repo id of either kind (e.g. ``llava-hf/LLaVA-Video-7B-Qwen2-hf``).

Anything else is a ``CopeInputError`` with one line naming the argument and the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cope.errors import CopeInputError
from cope.model.videolm.configuration_cope import (
    BASE_SUBFOLDER,
    CONFIG_NAME,
    QWEN_1_5_CHAT_TEMPLATE,
    is_cope_config,
)

LLAVA_ONEVISION_TYPE = "llava_onevision"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    name: str  # what the user passed
    cope_dir: Path | None  # local directory of a CoPE checkpoint; None for a bare base model
    base_model: str  # the base's hub id or local directory ("base" already resolved)


def resolve_checkpoint(name: str) -> ResolvedCheckpoint:
    """Decide what ``name`` is, reading at most one config.json (downloaded for hub ids)."""
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_local(name, path)
    if not _HUB_ID.match(name) or name.startswith((".", "~")) or name.count("/") > 1:
        raise CopeInputError(f"{name}: no such model directory")
    return _resolve_hub(name)


def _resolve_local(name: str, path: Path) -> ResolvedCheckpoint:
    if not path.is_dir():
        raise CopeInputError(f"{name}: not a model directory (expected config.json + *.safetensors)")
    data = _read_json(path / CONFIG_NAME)
    if is_cope_config(data):
        return ResolvedCheckpoint(name, path, _base_location(path, data))
    if data.get("model_type") == LLAVA_ONEVISION_TYPE:
        return ResolvedCheckpoint(name, None, str(path))
    raise CopeInputError(
        f"{path / CONFIG_NAME}: neither a CoPE checkpoint nor a LLaVA-OneVision model "
        f"(model_type {data.get('model_type')!r})"
    )


def _resolve_hub(repo_id: str) -> ResolvedCheckpoint:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        data = json.loads(Path(hf_hub_download(repo_id, CONFIG_NAME)).read_text())
        if not is_cope_config(data):
            if data.get("model_type") != LLAVA_ONEVISION_TYPE:
                raise CopeInputError(
                    f"{repo_id}: neither a CoPE checkpoint nor a LLaVA-OneVision model "
                    f"(model_type {data.get('model_type')!r})"
                )
            return ResolvedCheckpoint(repo_id, None, repo_id)
        local = Path(snapshot_download(repo_id))
    except CopeInputError:
        raise
    except Exception as exc:  # offline, unknown repo, gated repo, …: one line for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CopeInputError(
            f"{repo_id}: not a local directory, and the Hugging Face Hub could not provide it ({reason})"
        ) from None
    return ResolvedCheckpoint(repo_id, local, _base_location(local, data))


def _base_location(checkpoint: Path, data: dict) -> str:
    base = data.get("base_model")
    if not isinstance(base, str) or not base:
        raise CopeInputError(f"{checkpoint / CONFIG_NAME}: 'base_model' must name the base model")
    if base == BASE_SUBFOLDER:
        folder = checkpoint / BASE_SUBFOLDER
        if not (folder / CONFIG_NAME).is_file():
            raise CopeInputError(f"{folder}: the checkpoint's base model is missing")
        return str(folder)
    return base


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CopeInputError(f"{path.parent}: not a model directory (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CopeInputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise CopeInputError(f"{path}: expected a JSON object")
    return data


def load_base(base_model: str, dtype: torch.dtype):
    """The LLaVA-OneVision model and its tokenizer (never ``trust_remote_code``)."""
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    try:
        base = LlavaOnevisionForConditionalGeneration.from_pretrained(base_model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CopeInputError(f"{base_model}: cannot load the LLaVA-OneVision base model ({reason})") from None
    if tokenizer.chat_template is None and "<|im_start|>" in tokenizer.get_vocab():
        # llava-hf checkpoints keep the template in the processor; LLaVA-Video's is qwen_1_5.
        tokenizer.chat_template = QWEN_1_5_CHAT_TEMPLATE
    return base, tokenizer


def read_base_config(base_model: str):
    """The base model's HF config only (cheap: one small file)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_model)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CopeInputError(f"{base_model}: cannot read the base model's config ({reason})") from None
