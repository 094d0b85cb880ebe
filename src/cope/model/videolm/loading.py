"""Finding and loading what a ``--model`` argument names: a CoPE checkpoint or a bare base model.

Accepted forms:
* a local CoPE checkpoint directory (``config.json`` with ``cope_version``);
* a local LLaVA-OneVision directory (HF ``save_pretrained`` output, ``model_type`` llava_onevision);
* a Hugging Face Hub repo id of either kind (e.g. ``llava-hf/LLaVA-Video-7B-Qwen2-hf``).

Anything else is a ``CopeInputError`` with one line naming the argument and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cope.errors import CopeInputError
from cope.hub import read_json, resolve_directory
from cope.model.videolm.prompting import QWEN_1_5_CHAT_TEMPLATE

LLAVA_ONEVISION_TYPE = "llava_onevision"
# The CoPE checkpoint layout (see ``configuration_cope``): config.json with "cope_version",
# the Δ-encoder's weights, and optionally the base model in its own subfolder.
CONFIG_NAME = "config.json"
DELTA_WEIGHTS_NAME = "delta_encoder.safetensors"
BASE_SUBFOLDER = "base"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    name: str  # what the user passed
    cope_dir: Path | None  # local directory of a CoPE checkpoint; None for a bare base model
    base_model: str  # the base's hub id or local directory ("base" already resolved)


def resolve_checkpoint(name: str) -> ResolvedCheckpoint:
    """Decide what ``name`` is, reading one config.json (for a Hub id, downloading only it first)."""
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise CopeInputError(f"{name}: not a model directory (expected config.json + *.safetensors)")
    local = path.is_dir()
    directory = resolve_directory(name, allow_patterns=None if local else [CONFIG_NAME])
    if not (directory / CONFIG_NAME).is_file():
        raise CopeInputError(f"{directory}: not a model directory (no config.json)")
    data = read_json(directory / CONFIG_NAME)
    if is_cope_config(data):
        if not local:  # a CoPE checkpoint: now the whole repo (weights, base/ folder)
            directory = resolve_directory(name)
        return ResolvedCheckpoint(name, directory, _base_location(directory, data))
    if data.get("model_type") == LLAVA_ONEVISION_TYPE:
        # A bare base model: transformers' from_pretrained reads it from the path or the Hub itself.
        return ResolvedCheckpoint(name, None, str(directory) if local else name)
    raise CopeInputError(
        f"{directory / CONFIG_NAME}: neither a CoPE checkpoint nor a LLaVA-OneVision model "
        f"(model_type {data.get('model_type')!r})"
    )


def is_cope_config(data: dict) -> bool:
    return "cope_version" in data


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


def load_base(base_model: str, dtype: torch.dtype):
    """The LLaVA-OneVision model and its tokenizer (never ``trust_remote_code``)."""
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    try:
        base = LlavaOnevisionForConditionalGeneration.from_pretrained(base_model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except Exception as exc:  # transformers and the Hub raise many types for "cannot load it": one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CopeInputError(f"{base_model}: cannot load the LLaVA-OneVision base model ({reason})") from exc
    if tokenizer.chat_template is None and "<|im_start|>" in tokenizer.get_vocab():
        # llava-hf checkpoints keep the template in the processor; LLaVA-Video's is qwen_1_5.
        tokenizer.chat_template = QWEN_1_5_CHAT_TEMPLATE
    return base, tokenizer


def read_base_config(base_model: str):
    """The base model's HF config only (cheap: one small file)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_model)
    except Exception as exc:  # as in load_base: any failure to read it is the user's one-line error
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CopeInputError(f"{base_model}: cannot read the base model's config ({reason})") from exc
