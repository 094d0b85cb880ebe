"""Stage 2 (``cope finetune CONFIG``): train the VideoLM on instruction data with I-frame + Δ-tokens.

The model is a ``CopeVideoLM`` built from a base (a CoPE checkpoint, a LLaVA-OneVision model, the
``paper-7b`` recipe or the ``tiny`` random builder) and, optionally, a stage-1 checkpoint whose
Δ-encoder replaces the base's. The parts that train are named: ``delta_encoder``, ``projector``
(the multimodal projector and the learned row newline), ``llm`` (the language model and its head,
or only LoRA adapters on it) and ``vision_tower`` (frozen by default, as in the paper). Each part
can have its own learning rate (``train.part_learning_rates``).

"Stage 0" is the same command in ``data.mode: dense`` with ``model.delta_encoder: none``: dense
RGB training of a base VideoLM at 1 FPS, which the tiny recipe runs before stage 1.

The final artifact, ``OUTPUT/final``, is a CoPE checkpoint (``config.json``, ``delta_encoder.
safetensors``, ``base/`` with weights and tokenizer) that ``CopeVideoLM.from_pretrained`` and
``cope ask --model`` load. LoRA adapters are merged into the LLM's weights before it is written.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cope.errors import CopeInputError
from cope.plan import Mode
from cope.train.config import to_dict
from cope.train.loop import LoopConfig, TrainTask

PARTS = ("delta_encoder", "projector", "llm", "vision_tower")
LLAVA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """LoRA on the LLM (peft): the ``model.lora`` section. The LLM's own weights stay frozen."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAVA_LORA_TARGETS))


@dataclass
class Stage2ModelConfig:
    """What is trained and from where: the ``model`` section."""

    # A CoPE checkpoint or LLaVA-OneVision model (local dir or hub id), "paper-7b"
    # (llava-hf/LLaVA-Video-7B-Qwen2-hf + the paper's Δ-encoder dims), or "tiny" (random, CPU).
    base: str = "paper-7b"
    # cope.model.videolm.tiny_random arguments (seed defaults to train.seed)
    tiny: dict[str, Any] = field(default_factory=dict)
    # The Δ-encoder: a stage-1 checkpoint (``cope pretrain`` output or a DeltaEncoder dir); "" keeps
    # the base's (or builds a fresh ``delta_encoder_preset`` one if it has none); "none" = no
    # Δ-encoder (stage 0, dense only).
    delta_encoder: str = ""
    delta_encoder_preset: str = "compact"
    delta_encoder_overrides: dict[str, Any] = field(default_factory=dict)  # fields of a fresh one
    train_parts: list[str] = field(default_factory=lambda: ["delta_encoder", "projector", "llm"])
    lora: LoraSettings = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False  # recompute LLM (and trained tower) activations in backward
    # A frozen tower's features of each cached frame are computed once per run and kept in memory
    # (cope.model.videolm.tower_memo); the projector still trains on every step.
    cache_tower_features: bool = True
    # CopeConfig.time_words for the trained model: true / false, or null to keep the base's.
    time_words: bool | None = None

    def __post_init__(self):
        unknown = [p for p in self.train_parts if p not in PARTS]
        if unknown:
            raise ValueError(f"model.train_parts: unknown part {unknown[0]!r} (parts: {', '.join(PARTS)})")
        if not self.train_parts:
            raise ValueError("model.train_parts is empty: nothing would train")


@dataclass
class Stage2DataConfig:
    """The instruction data (``cope.data.instruct``) and how each video is sampled: ``data``."""

    mix: str = ""  # data-mix YAML (sources, video roots, ratios)
    eval_mix: str = ""  # held-out data mix for the evaluation loss ("" = no evaluation)
    eval_max_samples: int = 64  # evaluation cost cap (first N samples of the eval mix)
    # "cope": K keyframes + fused P-frames per GOP; "iframes-only": the same K keyframes alone;
    # "dense": every 1-FPS slot as RGB
    mode: str = "cope"
    keyframes_per_gop: int = 4  # paper stage 2: 4 keyframes + 4 P-frames per GOP
    fusion: int = 30
    max_gops: int = 64
    gop_jitter: bool = False  # random GOP per stratum beyond max_gops
    keyframe_jitter: bool = False  # random positions for the extra keyframes
    keyframes_choices: list[int] = field(default_factory=list)  # draw K per sample from these
    slot_cache: str = ""  # a `cope preprocess` cache (else every video is decoded when read)
    transcode_cache: str = ""  # canonical-stream cache for decoded videos (default ~/.cache/cope)
    max_length: int = 32768  # LLM positions per sample, text + visual (LLaVA-Video: 32K)
    pad_to_multiple_of: int = 0

    def __post_init__(self):
        if self.mode not in (Mode.COPE, Mode.IFRAMES_ONLY, Mode.DENSE):  # delta-zero is an eval ablation
            raise ValueError(f"data.mode must be 'cope', 'iframes-only' or 'dense', got {self.mode!r}")


@dataclass
class FinetuneConfig:
    train: LoopConfig = field(default_factory=LoopConfig)
    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)
    model: Stage2ModelConfig = field(default_factory=Stage2ModelConfig)


# --------------------------------------------------------------------------------------------
# The model


def build_videolm(config: Stage2ModelConfig, data: Stage2DataConfig, seed: int):
    """The ``CopeVideoLM`` to train, in float32 on the CPU (accelerate places and casts it)."""
    from cope.model.videolm import CopeVideoLM, paper_7b, tiny_random
    from cope.model.videolm.tower_memo import TowerFeatureMemo

    if config.base == "tiny":
        model = tiny_random(**{"seed": seed, **config.tiny, "with_delta_encoder": False})
    elif config.base == "paper-7b":
        model = paper_7b(device="cpu", dtype=torch.float32)
        model.delta_encoder = None  # decided below, as for any base
        model.config.delta_encoder = None
    else:
        model = CopeVideoLM.from_pretrained(
            os.path.expanduser(config.base), device="cpu", dtype=torch.float32
        )
    encoder = _delta_encoder(config, model, needs_deltas=data.mode == "cope")
    cope_config = dataclasses.replace(
        model.config,
        delta_encoder=None if encoder is None else encoder.config.to_dict(),
        mode="cope" if encoder is not None else "dense",
        train_vision_tower="vision_tower" in config.train_parts,
        time_words=model.config.time_words if config.time_words is None else config.time_words,
    )
    model = CopeVideoLM(
        cope_config, model.base, model.tokenizer, encoder, name=model.name, base_source=model.base_source
    )
    model.base.config.use_cache = False
    if config.cache_tower_features and not cope_config.train_vision_tower:
        model.tower_memo = TowerFeatureMemo()
    return model.train()


def _delta_encoder(config: Stage2ModelConfig, model, needs_deltas: bool):
    from cope.model.delta import DeltaEncoder, delta_encoder_config

    if config.delta_encoder == "none":
        if needs_deltas:
            raise CopeInputError("model.delta_encoder is 'none' but data.mode 'cope' needs Δ-tokens")
        return None
    if config.delta_encoder:
        return DeltaEncoder.from_pretrained(os.path.expanduser(config.delta_encoder))
    if model.delta_encoder is not None:
        return model.delta_encoder
    if not needs_deltas:
        return None
    vision_width = model.base.config.vision_config.hidden_size
    queries = model.config.layout.delta_tokens // 2
    settings = {"motion_queries": queries, "residual_queries": queries, **config.delta_encoder_overrides}
    return DeltaEncoder(
        delta_encoder_config(config.delta_encoder_preset, **settings, output_dim=vision_width)
    )


def apply_lora(model, lora: LoraSettings) -> None:
    """Wrap the LLM with peft LoRA adapters; its own weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    settings = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)
    )
    try:
        model.base.model.language_model = get_peft_model(model.base.model.language_model, settings)
    except ValueError as exc:
        raise CopeInputError(f"model.lora: {exc}") from exc


def enable_activation_checkpointing(base) -> None:
    """Recompute layer activations in backward (non-reentrant: works with a frozen vision tower)."""
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # the transformers 5 name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def named_parts(model, config: Stage2ModelConfig) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters of each part named in ``train_parts`` (names as in ``model``)."""
    owners = {
        "delta_encoder": "delta_encoder.",
        "projector": ("base.model.multi_modal_projector.", "base.model.image_newline"),
        "llm": ("base.model.language_model.", "base.lm_head."),
        "vision_tower": "base.model.vision_tower.",
    }
    parts = {}
    for part in config.train_parts:
        if part == "delta_encoder" and model.delta_encoder is None:
            raise CopeInputError("model.train_parts lists delta_encoder, but the model has no Δ-encoder")
        named = [
            (n, p) for n, p in model.named_parameters() if n.startswith(owners[part]) and p.requires_grad
        ]
        if part == "llm" and config.lora.enabled:
            named = [(n, p) for n, p in named if "lora_" in n]
        parts[part] = named
    return parts


def set_trainable(model, config: Stage2ModelConfig) -> None:
    """Freeze everything, then unfreeze the parts that train (LoRA: only the adapters of the LLM)."""
    model.requires_grad_(False)
    for part in config.train_parts:
        if part == "delta_encoder" and model.delta_encoder is not None:
            model.delta_encoder.requires_grad_(True)
        elif part == "projector":
            model.projector.requires_grad_(True)
            model.image_newline.requires_grad_(True)
        elif part == "vision_tower":
            model.vision_tower.requires_grad_(True)
        elif part == "llm":
            if config.lora.enabled:
                for name, param in model.language_model.named_parameters():
                    param.requires_grad_("lora_" in name)
            else:
                model.language_model.requires_grad_(True)
                model.lm_head.requires_grad_(True)


# --------------------------------------------------------------------------------------------
# The task


class FinetuneTask(TrainTask):
    """Stage 2 (and stage 0) for the generic loop."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.model = None
        self._last_batch = None

    def build_model(self) -> nn.Module:
        model_config = self.config.model
        model = build_videolm(model_config, self.config.data, self.config.train.seed)
        if model_config.lora.enabled:
            if "llm" not in model_config.train_parts:
                raise CopeInputError("model.lora.enabled needs 'llm' in model.train_parts")
            apply_lora(model, model_config.lora)
        set_trainable(model, model_config)
        if model_config.gradient_checkpointing:
            enable_activation_checkpointing(model.base)
        self.model = model
        return model

    def parts(self, model):
        return named_parts(model, self.config.model)

    def train_mode(self, model) -> None:
        """Training mode for the parts that train; frozen parts stay in eval mode, so a frozen
        Δ-encoder's batch-norm statistics do not drift."""
        model.train()
        trained = self.config.model.train_parts
        if model.delta_encoder is not None and "delta_encoder" not in trained:
            model.delta_encoder.eval()
        if "vision_tower" not in trained:
            model.vision_tower.eval()

    def _dataset(self, mix: str, seed_offset: int = 0):
        from cope.data.instruct import InstructDataConfig, InstructionDataset, Sampling, load_mix

        data = self.config.data
        sampling = Sampling(
            keyframes_per_gop="dense" if data.mode == "dense" else data.keyframes_per_gop,
            fusion=data.fusion,
            max_gops=data.max_gops,
            gop_jitter=data.gop_jitter,
            keyframe_jitter=data.keyframe_jitter,
            keyframes_choices=tuple(data.keyframes_choices),
            iframes_only=data.mode == "iframes-only",
        )
        settings = InstructDataConfig(
            sampling=sampling,
            cache_dir=os.path.expanduser(data.slot_cache) if data.slot_cache else None,
            canonical=self.model.config.canonical,
            transcode_cache=os.path.expanduser(data.transcode_cache) if data.transcode_cache else None,
            seed=self.config.train.seed + seed_offset,
        )
        return InstructionDataset(load_mix(os.path.expanduser(mix)), settings)

    def train_dataset(self):
        if not self.config.data.mix:
            raise CopeInputError(
                "data.mix: no data mix given (a YAML file listing record files and video roots)"
            )
        return self._dataset(self.config.data.mix)

    def collate(self, samples):
        if not hasattr(self, "_collator"):
            from cope.data.collate import CollateConfig, InstructCollator

            model_config, data = self.model.config, self.config.data
            self._collator = InstructCollator(
                self.model.tokenizer,
                CollateConfig(
                    max_length=data.max_length,
                    video_placeholder=model_config.video_placeholder,
                    chat_template=model_config.chat_template,
                    system_prompt=model_config.system_prompt,
                    layout=model_config.layout,
                    pad_to_multiple_of=data.pad_to_multiple_of or None,
                ),
            )
        return self._collator(samples)

    def loss(self, model, batch):
        metrics = {"skipped": float(len(batch.skipped)), "dropped": float(len(batch.dropped))}
        scale = 1.0
        if len(batch) == 0:
            # Every sample was dropped (too long). All processes must still run forward and
            # backward (DDP), so redo the previous micro-batch with a zero weight.
            if self._last_batch is None:
                raise CopeInputError(
                    f"no sample of the first batch fits data.max_length: {batch.dropped[0][1]}"
                )
            batch, scale = self._last_batch, 0.0
        self._last_batch = batch
        input_ids, labels = batch.sequences()
        out = model(input_ids=input_ids, labels=labels, visual_inputs=batch.visual)
        loss = out.loss * scale
        if self.model.delta_encoder is not None and not any(v.num_delta for v in batch.visual):
            # No P-frame in this micro-batch: give the Δ-encoder a zero gradient, so every process
            # reduces the same parameters (DDP) and nothing is "unused".
            loss = loss + 0.0 * sum(p.sum() for p in self.model.delta_encoder.parameters() if p.requires_grad)
        metrics["tokens"] = float(out.num_tokens) * scale
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model, accelerator) -> dict[str, float]:
        """Token-weighted mean loss on the first ``eval_max_samples`` samples of the eval mix."""
        data = self.config.data
        if not data.eval_mix:
            return {}
        if not hasattr(self, "_eval_data"):
            self._eval_data = self._dataset(data.eval_mix, seed_offset=1)
        count = min(len(self._eval_data), data.eval_max_samples)
        batch_size = self.config.train.per_device_batch_size
        inner = accelerator.unwrap_model(model)
        total, tokens = 0.0, 0
        for start in range(0, count, batch_size):
            batch = self.collate([self._eval_data[i] for i in range(start, min(count, start + batch_size))])
            if len(batch) == 0:
                continue
            input_ids, labels = batch.sequences()
            out = inner(input_ids=input_ids, labels=labels, visual_inputs=batch.visual)
            total += out.loss.item() * out.num_tokens
            tokens += out.num_tokens
        return {"loss": total / tokens, "tokens": float(tokens)} if tokens else {}

    def save_final(self, model, state_dict, directory: Path) -> None:
        """The CoPE checkpoint, from the gathered state dict (under FSDP / ZeRO-3 the module holds
        only shards), LoRA adapters merged into the LLM's weights (it loads without peft)."""
        model.save_pretrained(directory, overwrite=True, state_dict=merged_lora_state(state_dict, model))


def merged_lora_state(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Replace peft's ``X.base_layer.weight`` + ``X.lora_A/B`` entries by the merged ``X.weight``.

    Also drops peft's ``base_model.model.`` wrapper prefix, so the names are the plain LLM's.
    """
    if not any(".lora_A." in k for k in state_dict):
        return state_dict
    from peft import PeftModel

    language_model = model.base.model.language_model
    scaling = {}
    if isinstance(language_model, PeftModel):
        for name, module in language_model.named_modules():
            if (
                hasattr(module, "scaling")
                and isinstance(module.scaling, dict)
                and "default" in module.scaling
            ):
                scaling[name] = module.scaling["default"]
    prefix = "base.model.language_model."
    wrapper = prefix + "base_model.model."
    merged: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key or ".lora_dropout." in key:
            continue
        if ".base_layer." in key:
            owner = key.split(".base_layer.")[0]
            leaf = key.split(".base_layer.")[1]
            if leaf == "weight":
                a = state_dict[f"{owner}.lora_A.default.weight"].float()
                b = state_dict[f"{owner}.lora_B.default.weight"].float()
                module_name = owner.removeprefix(prefix)
                value = (value.float() + (b @ a) * scaling[module_name]).to(value.dtype)
            key = f"{owner}.{leaf}"
        merged[key.replace(wrapper, prefix)] = value
    return merged


def run_finetune(config: FinetuneConfig, resume: bool = False, progress: bool = True):
    """Train stage 2 (or stage 0) as configured; returns the loop's ``TrainResult``."""
    from cope.train.loop import train

    config.train.progress = config.train.progress and progress
    return train(FinetuneTask(config), config.train, to_dict(config), resume=resume)
